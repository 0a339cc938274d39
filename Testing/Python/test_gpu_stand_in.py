"""The engine's CUDA-only paths on the CPU, against a strict CUDA stand-in (cuda_stand_in.py): the batch thread
selects the training's GPU by index (``torch.cuda.set_device`` rejects a bare ``cuda``), pins the batch, the
copy to the GPU is queued, a training step never waits for the GPU, the joint backward is chosen from the
memory figures, and the sliding window blends on the GPU or in host memory as the free memory allows."""

import threading

import helpers  # noqa: F401  (one torch thread)
import numpy as np
import pytest
import torch

import cuda_stand_in
from cuda_stand_in import GB, HostSync, StandInDevice
from SemiSupSegTraining import gpu, infer, losses
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.data import load_training_cases
from SemiSupSegTraining.infer import Segmenter
from SemiSupSegTraining.manifest import load_manifest
from SemiSupSegTraining.prefetch import Prefetcher
from SemiSupSegTraining.train import Trainer


@pytest.fixture
def cuda(monkeypatch):
    return cuda_stand_in.install(monkeypatch)


def _trainer(phantom_dataset, device, **overrides):
    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("tiny", dict({"device": "cuda", "batch_labeled": 2, "batch_unlabeled": 2}, **overrides))
    return Trainer(config, len(manifest.classes), labeled, unlabeled, device)


def test_the_stand_in_rejects_what_cuda_rejects_and_catches_host_syncs(cuda):
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_device(StandInDevice())  # torch.device("cuda") on a real GPU: the same error
    torch.cuda.set_device(StandInDevice(1))
    assert cuda.selected[threading.current_thread().name] == 1
    batch = torch.ones(3).pin_memory()
    on_device = batch.to(StandInDevice(), non_blocking=True)
    with cuda.strict():
        total = (on_device * 2).sum()
        assert isinstance(total, cuda_stand_in.DeviceTensor)
        for sync in (total.item, lambda: bool(total > 0), lambda: float(total), lambda: total.new_tensor(6.0),
                     lambda: on_device[on_device > 1], lambda: torch.nonzero(on_device), total.cpu,
                     lambda: torch.ones(3).to(StandInDevice()), lambda: batch.to(StandInDevice())):
            with pytest.raises(HostSync):
                sync()
        total.new_full((), 6.0)  # a fill on the device: no copy from the host
    assert total.item() == 6.0  # outside the step, reading is allowed


def test_the_global_batch_cross_entropy_counts_its_voxels_on_the_device(cuda):
    """Under torchrun the count travels with the sum through the all-reduce: it is filled on the GPU, not
    copied from the host (here the all-reduce of one process: the identity)."""
    logits = torch.randn(2, 3, 4, 5).pin_memory().to(StandInDevice(), non_blocking=True)
    target = torch.randint(0, 3, (2, 4, 5)).pin_memory().to(StandInDevice(), non_blocking=True)
    with cuda.strict():
        value = losses.masked_cross_entropy(logits, target, None, reduce=lambda sums: sums)
    assert torch.allclose(value, torch.nn.functional.cross_entropy(logits, target))


@pytest.mark.parametrize("index, selected", [(None, 0), (1, 1)])
def test_the_batch_thread_selects_the_gpu_by_its_index(cuda, index, selected):
    """``--device cuda`` gives a device without an index: the thread selects the current GPU (else the
    initializer raises, the pool breaks and every step fails with BrokenThreadPool)."""
    prefetcher = Prefetcher(lambda: (torch.ones(1), torch.ones(1)), np.random.default_rng(0),
                            gpu.thread_device_setup(StandInDevice(index)))
    try:
        prefetcher.next()
    finally:
        prefetcher.close()
    assert [index for name, index in cuda.selected.items() if name.startswith("semisupseg-batch")] == [selected]
    assert gpu.thread_device_setup(torch.device("cpu")) is None


@pytest.mark.parametrize("amp", ["auto", "fp32"])
def test_a_training_step_on_the_gpu_stand_in_never_waits_for_it(phantom_dataset, cuda, amp):
    """As ``semisupseg train --device cuda`` builds it: the batch thread selects GPU 0 and pins the crops
    (labels as bytes), the copies are queued, the first step measures the memory and takes the joint
    backward (3 GB peak, 1 GB weights, 70 GB free), and no step reads a value from the GPU."""
    trainer = _trainer(phantom_dataset, StandInDevice(), amp=amp)
    assert trainer.prefetcher is not None and trainer.sequential_backward  # until the first step has measured
    with cuda.strict():
        for _ in range(3):
            terms = trainer.step()
    trainer.prefetcher.close()
    assert trainer.sequential_backward is False
    assert {name: index for name, index in cuda.selected.items() if name.startswith("semisupseg-batch")} == {
        "semisupseg-batch_0": 0}
    assert cuda.pinned and all(name.startswith("semisupseg-batch") for name in cuda.pinned)
    assert {"mem_get_info", "max_memory_allocated", "get_rng_state", "set_rng_state"} <= set(cuda.calls)
    assert {"unsup_a", "reg", "contrast_b"} <= set(terms)  # the paper's terms all ran
    assert all(torch.isfinite(v).all() for v in terms.values())


def test_the_sequential_backward_stays_when_the_joint_one_would_not_fit(phantom_dataset, cuda):
    cuda.memory.update(free=2 * GB, reserved=1 * GB)  # joint: 1 + 2 × 2 GB + 20 % = 6 GB > 3 GB to be had
    trainer = _trainer(phantom_dataset, StandInDevice(), amp="fp32", prefetch=False)
    with cuda.strict():
        for _ in range(2):
            trainer.step()
    assert trainer.sequential_backward is True


def test_the_sliding_window_blends_where_the_free_memory_allows(tiny_model_file, cuda, monkeypatch):
    """On the GPU when its output fits, else in host memory with several window batches buffered on the GPU
    between copies; the same probabilities as the CPU's either way."""
    image = np.random.default_rng(3).normal(size=(24, 40, 36)).astype(np.float32)
    expected = Segmenter(tiny_model_file, "cpu", amp="fp32", disagreement=False).predict(image)[0]
    calls = []
    window = infer.sliding_window_inference

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return window(*args, **kwargs)

    monkeypatch.setattr(infer, "sliding_window_inference", recording)
    for free, on_gpu in ((8 * GB, True), (1 << 20, False)):  # the output and a window batch need ~15 MB
        cuda.memory["free"] = free
        seg = Segmenter(tiny_model_file, "cpu", amp="fp32", disagreement=False)
        seg.device, seg.memory_format = StandInDevice(), torch.contiguous_format
        probs = seg.predict(image)[0]
        assert isinstance(calls[-1]["device"], StandInDevice) is on_gpu
        assert ("buffer_steps" in calls[-1]) is not on_gpu
        np.testing.assert_allclose(probs, expected, atol=1e-6)
