"""Whole-volume segmentation with both networks: sliding windows (MONAI), Gaussian blending, softmax of the
two networks averaged (as the paper tests; a model file's ``inference`` metadata can name one network
instead, e.g. a Mean Teacher's teacher), output on the input's exact grid.

Optional outputs: the probability that a voxel is not background, the uncertainty (entropy of the
averaged softmax divided by log K, 0..1) and the disagreement of the two networks (total-variation
distance between their softmax outputs, 0..1).
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from . import gpu
from .config import CUDA_WINDOW_BATCH, DEFAULT_OVERLAP, DEFAULT_WINDOW_BATCH, zyx
from .fileio import read_image, Volume, write_image_atomic, write_label_image
from .geometry import normalize
from .devices import autocast, autocast_dtype, memory_format, select_device
from .errors import Cancelled, InputError, is_out_of_memory
from .geometry import geometry_of_model, to_canonical, to_grid
from .modelfile import classes_of, inference_of, load_model
from .networks import fold_batchnorm
from .progress import Reporter
from .runfolder import StopRequest


@dataclass
class Segmentation:
    labels: np.ndarray                      # class indices (z, y, x) uint8
    probabilities: np.ndarray               # averaged softmax (K, z, y, x) float32
    disagreement: Optional[np.ndarray]      # (z, y, x) float32; None when the Segmenter was asked not to

    @property
    def foreground_probability(self) -> np.ndarray:
        return 1.0 - self.probabilities[0]

    @property
    def uncertainty(self) -> np.ndarray:
        """Entropy of the averaged softmax / log K, computed slab by slab (no K-channel temporaries)."""
        probs = self.probabilities
        out = np.empty(probs.shape[1:], np.float32)
        for slab in _slabs(probs.shape[1], probs.shape[0] * int(np.prod(probs.shape[2:]))):
            p = np.clip(probs[:, slab], 1e-8, 1.0)
            out[slab] = -(p * np.log(p)).sum(0) / math.log(probs.shape[0])
        return out


def _slabs(depth: int, voxels_per_slice: int, budget: int = 1 << 22):
    """z ranges of about ``budget`` values each: whole-volume reductions without whole-volume temporaries."""
    step = max(1, budget // max(voxels_per_slice, 1))
    return [slice(z, min(z + step, depth)) for z in range(0, depth, step)]


def argmax_labels(probabilities: np.ndarray) -> np.ndarray:
    """Class indices (z, y, x) uint8 of (K, z, y, x) probabilities, slab by slab: numpy's argmax would
    allocate an int64 volume (8 bytes per voxel) first."""
    labels = np.empty(probabilities.shape[1:], np.uint8)
    for slab in _slabs(probabilities.shape[1], probabilities.shape[0] * int(np.prod(probabilities.shape[2:]))):
        labels[slab] = probabilities[:, slab].argmax(0)
    return labels


def per_axis(overlap: Any, dims: int = 3) -> Tuple[float, ...]:
    """The overlap per axis (z, y, x): one value for every axis, or one per axis."""
    return tuple(float(o) for o in overlap) if isinstance(overlap, (tuple, list)) else (float(overlap),) * dims


def overlap_for_stride(window_xyz: Sequence[int], stride_xyz: Sequence[int]) -> Tuple[float, float, float]:
    """The per-axis overlap (z, y, x) at which MONAI steps ``stride_xyz`` voxels (it steps int(window × (1 −
    overlap))): the paper's 112×112×80 windows every 18×18×4 voxels give (0.944, 0.835, 0.835)."""
    if len(stride_xyz) != 3 or not all(1 <= int(s) <= int(w) for s, w in zip(stride_xyz, window_xyz)):
        raise InputError(f"The stride {tuple(stride_xyz)} needs three steps of 1 voxel up to the model's window "
                         f"{tuple(window_xyz)}, e.g. 18 18 4 for the paper's 112×112×80 windows.")
    return tuple(1.0 - (int(s) + 0.5) / int(w) for s, w in zip(stride_xyz, window_xyz))[::-1]


def window_count(shape: Sequence[int], window: Sequence[int], overlap: Any) -> int:
    """How many windows MONAI's sliding window places over ``shape`` (for progress)."""
    count = 1
    for size, roi, share in zip(shape, window, per_axis(overlap, len(window))):
        if size <= roi:
            continue
        interval = max(int(roi * (1 - share)), 1)
        count *= math.ceil((size - roi) / interval) + 1
    return count


class Segmenter:
    """A loaded model file, ready to segment volumes. ``window_batch`` windows run per forward pass (None:
    :data:`config.DEFAULT_WINDOW_BATCH`, :data:`config.CUDA_WINDOW_BATCH` on a CUDA GPU).

    ``blend_on_device`` (CUDA only): the blended output lives on the GPU when it fits there ("auto",
    :func:`gpu.blend_on_device_fits`; True: always; False: in host memory, with MONAI buffering
    ``buffer_steps`` window batches on the GPU between copies); ``cudnn_benchmark``: cuDNN's autotuner."""

    def __init__(self, model_path: str, device: str = "auto", overlap: float = DEFAULT_OVERLAP,
                 window_batch: Optional[int] = None,
                 amp: Any = "auto", on_message: Optional[Callable[[str], None]] = None,
                 disagreement: bool = True, blend_on_device: Any = "auto", buffer_steps: int = 4,
                 cudnn_benchmark: bool = True):
        if not all(0.0 <= share < 1.0 for share in per_axis(overlap)):
            raise InputError(f"Overlap {overlap} must lie in [0, 1); {DEFAULT_OVERLAP} is a good choice.")
        self.device = select_device(device)
        if window_batch is None:
            window_batch = CUDA_WINDOW_BATCH if self.device.type == "cuda" else DEFAULT_WINDOW_BATCH
        if window_batch < 1:
            raise InputError(f"The window batch {window_batch} must be at least 1.")
        gpu.configure_cuda(self.device, cudnn_benchmark)
        self.blend_on_device = blend_on_device
        self.buffer_steps = buffer_steps
        self.net_a, self.net_b, self.meta = load_model(model_path, str(self.device))
        # Exact speed-ups: batch norm folded into the convolutions; channels-last 3D on CPUs (oneDNN).
        self.memory_format = memory_format(self.device)
        self.net_a, self.net_b = (fold_batchnorm(n).to(memory_format=self.memory_format)
                                  for n in (self.net_a, self.net_b))
        self.classes = classes_of(self.meta)
        self.inference = inference_of(self.meta)
        self.window = zyx(self.meta["patch_size"])
        #: (orientation, target spacing or None) the networks were trained in; None for older model files,
        #: which segment each scan on its own voxel grid.
        self.geometry = geometry_of_model(self.meta)
        self.overlap = overlap
        self.window_batch = window_batch
        self.amp = amp
        self.amp_dtype = autocast_dtype(self.device, amp)
        #: Told (one sentence) when inference falls back to fewer windows per pass or to the CPU.
        self.on_message = on_message
        #: Whether to blend the two networks' disagreement too: one more float32 volume (4 bytes per voxel).
        self.disagreement = disagreement

    def normalize(self, array: np.ndarray) -> np.ndarray:
        norm = self.meta["normalization"]
        return normalize(array, norm["method"], tuple(norm.get("ct_window", (-120.0, 240.0))))

    def _predictor(self, windows: torch.Tensor) -> torch.Tensor:
        windows = windows.contiguous(memory_format=self.memory_format)
        # The method decides which network(s) segment (a Mean Teacher's teacher is b); disagreement is a vs b.
        needed = ("a", "b") if self.disagreement or self.inference == "both" else (self.inference,)
        with autocast(self.device, self.amp_dtype):
            p = {name: torch.softmax(net(windows)[0].float(), 1)
                 for name, net in (("a", self.net_a), ("b", self.net_b)) if name in needed}
        probs = 0.5 * (p["a"] + p["b"]) if self.inference == "both" else p[self.inference]
        if not self.disagreement:
            return probs
        disagreement = 0.5 * (p["a"] - p["b"]).abs().sum(1, keepdim=True)
        return torch.cat([probs, disagreement], 1)

    def predict(self, image: np.ndarray, on_window_batch: Optional[Callable[[int, int], None]] = None
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Averaged softmax (K, z, y, x) and disagreement (z, y, x; None unless ``self.disagreement``) of a
        normalised image (z, y, x).

        The volume stays in host memory; only a batch of windows visits the device at a time, so device
        memory depends on the window batch, not on the volume. When the device runs out of memory the
        windows go one at a time, then to the CPU (each step told through ``on_message``); out of memory
        on the CPU with one window at a time raises :class:`MemoryError` with a sentence for the user.
        """
        while True:
            try:
                return self._predict_once(image, on_window_batch)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
            # Outside the except clause: the failed attempt's tensors (held by the traceback) are gone.
            self._fall_back(image.shape)

    def _fall_back(self, shape: Sequence[int]) -> None:
        """One step down after running out of memory: the output to host memory, one window per pass, then the
        CPU, then give up."""
        where = {"cuda": "GPU", "cpu": "CPU"}.get(self.device.type, self.device.type.upper())
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            if self.blend_on_device is not False:  # quietly first: the output to host memory
                self.blend_on_device = False
                return
        if self.window_batch > 1:
            self.window_batch = 1
            self._tell(f"The {where} ran out of memory with several windows per pass; segmenting one window "
                       f"at a time (slower).")
            return
        if self.device.type != "cpu":
            self.device = torch.device("cpu")
            self.memory_format = memory_format(self.device)
            self.net_a.to(self.device, memory_format=self.memory_format)
            self.net_b.to(self.device, memory_format=self.memory_format)
            self.amp_dtype = autocast_dtype(self.device, self.amp)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._tell(f"The {where} ran out of memory even with one window at a time; segmenting on the CPU "
                       f"instead (much slower).")
            return
        raise MemoryError(f"Out of memory while segmenting a volume of {tuple(int(s) for s in shape[::-1])} "
                          f"voxels on the CPU, even one window at a time; close other programs, segment a "
                          f"region of interest (--roi), or use a machine with more memory.")

    def _blending_device(self, shape: Sequence[int]) -> torch.device:
        """Where the blended output lives (see the class's ``blend_on_device``)."""
        if self.device.type != "cuda" or self.blend_on_device is False:
            return torch.device("cpu")
        if self.blend_on_device is True:
            return self.device
        channels = len(self.classes) + (1 if self.disagreement else 0)
        free, _, _ = gpu.memory_figures(self.device)
        need = gpu.window_memory_estimate(int(np.prod(self.window)), self.window_batch)
        fits = gpu.blend_on_device_fits(int(np.prod(shape)), channels, free, need)
        return self.device if fits else torch.device("cpu")

    def _tell(self, message: str) -> None:
        if self.on_message is not None:
            self.on_message(message)

    def _predict_once(self, image: np.ndarray, on_window_batch: Optional[Callable[[int, int], None]]
                      ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        total = math.ceil(window_count(image.shape, self.window, self.overlap) / self.window_batch)
        done = [0]

        def predictor(windows):
            out = self._predictor(windows)
            done[0] += 1
            if on_window_batch is not None:
                on_window_batch(done[0], total)
            return out

        inputs = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        blend = self._blending_device(image.shape)
        # On the CPU the volume and the blended output stay in host memory (sw_device: where windows run);
        # on a GPU they live there when they fit, else MONAI adds several window batches on the GPU per copy.
        where = {"device": blend}
        if blend.type == "cuda":
            inputs = inputs.to(blend)
        elif self.device.type == "cuda" and self.buffer_steps:
            where.update(buffer_steps=self.buffer_steps, buffer_dim=0)
        with torch.inference_mode():
            out = sliding_window_inference(inputs, self.window, self.window_batch, predictor,
                                           overlap=self.overlap, mode="gaussian", sw_device=self.device, **where)
        out = out[0].float().cpu().numpy()  # on the CPU a view: no copy of the channels
        return (out[:-1], out[-1]) if self.disagreement else (out, None)

    def segment(self, volume: Volume, roi: Optional[Sequence[int]] = None, keep_largest: bool = False,
                on_window_batch: Optional[Callable[[int, int], None]] = None,
                release_input: bool = False) -> Segmentation:
        """Segments a volume (raw intensities); ``roi`` = (i0, j0, k0, i1, j1, k1) voxel box of the input,
        end exclusive. The result lies on the volume's own grid, whatever orientation and spacing the
        networks work in.

        ``release_input=True`` drops ``volume.array`` (sets it to None) once it is normalised, so that the raw
        intensities do not stay in memory beside the whole-volume outputs; for callers that own the volume.
        """
        shape = volume.array.shape
        box = roi_slices(roi, shape, volume.path)
        image = self.normalize(volume.array[box])
        if release_input:
            volume.array = None
        if self.geometry is not None:  # to the networks' orientation and spacing; there and back
            grid = volume.geometry.crop(box)
            image, canonical = to_canonical(image, grid, self.geometry[1])
        probs, disagreement = self.predict(image, on_window_batch)
        del image  # the normalised copy is not needed any more: free it before the label map
        if self.geometry is not None:  # class probabilities onto the input's grid, then the argmax
            probs = to_grid(probs, canonical, grid)
            if disagreement is not None:
                disagreement = to_grid(disagreement, canonical, grid)
        labels = argmax_labels(probs)
        if keep_largest:
            labels = keep_largest_components(labels)
        if roi is None:
            return Segmentation(labels, probs, disagreement)
        full = Segmentation(np.zeros(shape, np.uint8), np.zeros((probs.shape[0],) + shape, np.float32),
                            None if disagreement is None else np.zeros(shape, np.float32))
        full.probabilities[0] = 1.0
        full.labels[box] = labels
        full.probabilities[(slice(None),) + box] = probs
        if disagreement is not None:
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
                 device: str = "auto", overlap: float = DEFAULT_OVERLAP, window_batch: Optional[int] = None,
                 roi: Optional[Sequence[int]] = None, keep_largest: bool = False,
                 reporter: Optional[Reporter] = None, stop_file: Optional[str] = None) -> Dict[str, str]:
    """Segments an image file; every output has the input's size, origin, spacing and direction.

    When the file ``stop_file`` appears (checked between window batches), the segmentation stops with
    :class:`Cancelled` before anything is written, and the stop file is removed.
    """
    reporter = reporter or Reporter("none")
    stop = StopRequest(stop_file=stop_file)
    try:
        return _segment_file(model_path, input_path, output_path, probabilities_path, uncertainty_path,
                             disagreement_path, device, overlap, window_batch, roi, keep_largest, reporter, stop)
    except Cancelled:
        stop.consume()
        reporter.emit("cancelled", "segment", message=f"Stopped before writing {output_path}; nothing was written.")
        raise


def _segment_file(model_path, input_path, output_path, probabilities_path, uncertainty_path, disagreement_path,
                  device, overlap, window_batch, roi, keep_largest, reporter: Reporter, stop: StopRequest
                  ) -> Dict[str, str]:
    def on_window_batch(done: int, total: int) -> None:
        if stop.requested:
            raise Cancelled()
        reporter.progress("segment", done, total)

    segmenter = Segmenter(model_path, device, overlap, window_batch,
                          on_message=lambda text: reporter.emit("warning", "segment", message=text),
                          disagreement=disagreement_path is not None)
    volume = read_image(input_path)
    reporter.emit("start", "segment", device=str(segmenter.device),
                  message=f"Segmenting {input_path} on {segmenter.device}.")
    reporter.restart_clock()
    result = segmenter.segment(volume, roi, keep_largest, on_window_batch, release_input=True)
    if stop.requested:
        raise Cancelled()
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
