"""Whole-volume segmentation with both networks: sliding windows (MONAI), Gaussian blending, softmax of the
two networks averaged (as the paper tests), output on the input's exact grid.

Optional outputs: the probability that a voxel is not background, the uncertainty (entropy of the
averaged softmax divided by log K, 0..1) and the disagreement of the two networks (total-variation
distance between their softmax outputs, 0..1).
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from .config import zyx
from .data import Volume, normalize, read_image, write_image_atomic, write_label_image
from .devices import autocast, autocast_dtype, select_device
from .errors import InputError
from .modelfile import classes_of, load_model
from .progress import Reporter


@dataclass
class Segmentation:
    labels: np.ndarray                      # class indices (z, y, x) uint8
    probabilities: np.ndarray               # averaged softmax (K, z, y, x) float32
    disagreement: np.ndarray                # (z, y, x) float32

    @property
    def foreground_probability(self) -> np.ndarray:
        return 1.0 - self.probabilities[0]

    @property
    def uncertainty(self) -> np.ndarray:
        p = np.clip(self.probabilities, 1e-8, 1.0)
        return (-(p * np.log(p)).sum(0) / math.log(p.shape[0])).astype(np.float32)


def window_count(shape: Sequence[int], window: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding window places over ``shape`` (for progress)."""
    count = 1
    for size, roi in zip(shape, window):
        if size <= roi:
            continue
        interval = max(int(roi * (1 - overlap)), 1)
        count *= math.ceil((size - roi) / interval) + 1
    return count


class Segmenter:
    """A loaded model file, ready to segment volumes. ``window_batch`` windows run per forward pass."""

    def __init__(self, model_path: str, device: str = "auto", overlap: float = 0.5, window_batch: int = 4,
                 amp: bool = True):
        if not 0.0 <= overlap < 1.0:
            raise InputError(f"Overlap {overlap} must lie in [0, 1); 0.5 is a good choice.")
        self.device = select_device(device)
        self.net_a, self.net_b, self.meta = load_model(model_path, str(self.device))
        self.classes = classes_of(self.meta)
        self.window = zyx(self.meta["patch_size"])
        self.overlap = overlap
        self.window_batch = window_batch
        self.amp_dtype = autocast_dtype(self.device, amp)

    def normalize(self, array: np.ndarray) -> np.ndarray:
        norm = self.meta["normalization"]
        return normalize(array, norm["method"], tuple(norm.get("ct_window", (-120.0, 240.0))))

    def _predictor(self, windows: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp_dtype):
            pa = torch.softmax(self.net_a(windows)[0].float(), 1)
            pb = torch.softmax(self.net_b(windows)[0].float(), 1)
        disagreement = 0.5 * (pa - pb).abs().sum(1, keepdim=True)
        return torch.cat([0.5 * (pa + pb), disagreement], 1)

    def predict(self, image: np.ndarray, on_window_batch: Optional[Callable[[int, int], None]] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
        """Averaged softmax (K, z, y, x) and disagreement (z, y, x) of a normalised image (z, y, x)."""
        total = math.ceil(window_count(image.shape, self.window, self.overlap) / self.window_batch)
        done = [0]

        def predictor(windows):
            out = self._predictor(windows)
            done[0] += 1
            if on_window_batch is not None:
                on_window_batch(done[0], total)
            return out

        inputs = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.device)
        with torch.inference_mode():
            out = sliding_window_inference(inputs, self.window, self.window_batch, predictor,
                                           overlap=self.overlap, mode="gaussian", device=torch.device("cpu"))
        out = out[0].float().numpy()
        return out[:-1], out[-1]

    def segment(self, volume: Volume, roi: Optional[Sequence[int]] = None, keep_largest: bool = False,
                on_window_batch: Optional[Callable[[int, int], None]] = None) -> Segmentation:
        """Segments a volume (raw intensities); ``roi`` = (i0, j0, k0, i1, j1, k1) voxel box, end exclusive."""
        box = roi_slices(roi, volume.array.shape, volume.path)
        image = self.normalize(volume.array[box])
        probs, disagreement = self.predict(image, on_window_batch)
        labels = probs.argmax(0).astype(np.uint8)
        if keep_largest:
            labels = keep_largest_components(labels)
        if roi is None:
            return Segmentation(labels, probs, disagreement)
        full = Segmentation(np.zeros(volume.array.shape, np.uint8),
                            np.zeros((probs.shape[0],) + volume.array.shape, np.float32),
                            np.zeros(volume.array.shape, np.float32))
        full.probabilities[0] = 1.0
        full.labels[box] = labels
        full.probabilities[(slice(None),) + box] = probs
        full.disagreement[box] = disagreement
        return full


def roi_slices(roi: Optional[Sequence[int]], shape_zyx: Sequence[int], path: str) -> Tuple[slice, slice, slice]:
    if roi is None:
        return (slice(None),) * 3
    if len(roi) != 6:
        raise InputError("The region of interest needs six voxel indices: I0 J0 K0 I1 J1 K1.")
    start, end = np.array(roi[:3], int)[::-1], np.array(roi[3:], int)[::-1]
    start, end = np.maximum(start, 0), np.minimum(end, shape_zyx)
    if np.any(end - start < 2):
        raise InputError(f"The region of interest {tuple(roi)} does not overlap the image {path} (size "
                         f"{tuple(shape_zyx[::-1])}); draw it around the structure.")
    return tuple(slice(int(s), int(e)) for s, e in zip(start, end))


def keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Keeps the largest 26-connected component of each foreground class; the rest becomes background."""
    out = np.zeros_like(labels)
    for k in np.unique(labels):
        if k == 0:
            continue
        components, count = ndimage.label(labels == k, structure=np.ones((3, 3, 3)))
        if count:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[components == sizes.argmax()] = k
    return out


def segment_file(model_path: str, input_path: str, output_path: str, probabilities_path: Optional[str] = None,
                 uncertainty_path: Optional[str] = None, disagreement_path: Optional[str] = None,
                 device: str = "auto", overlap: float = 0.5, window_batch: int = 4,
                 roi: Optional[Sequence[int]] = None, keep_largest: bool = False,
                 reporter: Optional[Reporter] = None) -> Dict[str, str]:
    """Segments an image file; every output has the input's size, origin, spacing and direction."""
    reporter = reporter or Reporter("none")
    segmenter = Segmenter(model_path, device, overlap, window_batch)
    volume = read_image(input_path)
    reporter.emit("start", "segment", device=str(segmenter.device),
                  message=f"Segmenting {input_path} on {segmenter.device}.")
    reporter.restart_clock()
    result = segmenter.segment(volume, roi, keep_largest,
                               lambda i, n: reporter.progress("segment", i, n))
    write_label_image(result.labels, segmenter.classes, volume.geometry, output_path)
    written = {"output": output_path}
    extras = ((probabilities_path, "probabilities", lambda: result.foreground_probability),
              (uncertainty_path, "uncertainty", lambda: result.uncertainty),
              (disagreement_path, "disagreement", lambda: result.disagreement))
    for path, key, make in extras:
        if path:
            write_image_atomic(volume.geometry.to_image(make().astype(np.float32)), path)
            written[key] = path
    reporter.emit("done", "segment", message=f"Segmentation written: {output_path}", **written)
    return written
