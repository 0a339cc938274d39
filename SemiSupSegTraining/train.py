"""The training loop: both networks, the paper's losses, schedules, mixed precision, progress events, and
the same loop on several processes (torchrun, :mod:`.distributed`).

The output folder (lock, checkpoints, resume, log) is :mod:`.runfolder`'s.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from . import distributed, fileio, geometry, gpu, methods
from .config import DEFAULT_PRESET, TrainConfig, preset_config, with_run_settings, zyx
from .augment import unlabeled_level
from .data import load_training_cases, PatchSampler
from .geometry import normalization_for
from .devices import autocast, autocast_dtype, memory_format, precision_name, select_device
from .errors import Cancelled, DistributedError, InputError, is_out_of_memory
from .layouts import load_cases
from .manifest import CaseEntry, Manifest, class_color, hold_out, manifest_to_dict
from .modelfile import load_trusted_data, save_model
from .networks import NETWORK_KINDS, ProjectionHead, build_networks
from .prefetch import Prefetcher
from .progress import Reporter
from .runfolder import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, CONFIG_NAME, LOCK_NAME, LOG_NAME, MODEL_NAME,  # noqa: F401
                        PREVIOUS_CHECKPOINT_NAME, VALIDATION_NAME,
                        CheckpointClock, StopRequest, TrainingLock, disk_errors, load_checkpoint, remove_if_empty,
                        remove_partial_files, resume_point, trim_log, write_checkpoint, write_run_record,
                        write_text_atomic)
from .views import intensity_view

# Logged beside the losses, but not losses: progress events carry them under "stats".
STAT_KEYS = ("reliable_fraction", "pulled_fraction", "mdiff_voxels", "lambda_c", "lambda_u", "certain_fraction",
             "consistency_weight", "cps_weight")


# ------------------------------------------------------------------------------------------- the step

def rank_seed(seed: int, rank: int) -> int:
    """Process ``rank``'s seed: ``seed`` itself on rank 0 (a single process draws what it always drew), an
    independent stream from numpy's SeedSequence on the others."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The paper's step schedule: lr ÷10 every ``lr_step`` iterations."""
    return config.lr * config.lr_gamma ** (iteration // config.lr_step)


class Trainer:
    """Both networks, their optimisers and the data; :meth:`step` runs one iteration of the method
    (``config.method``, :mod:`.methods`). What a method may use of it is :class:`.methods.base.TrainerView`."""

    def __init__(self, config: TrainConfig, num_classes: int, labeled: list, unlabeled: list,
                 device: torch.device, crops_on_device: Optional[bool] = None):
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.amp_dtype = autocast_dtype(device, config.amp, training=True)
        gpu.configure_cuda(device, config.cudnn_benchmark)
        # "auto": sequential until the first step on CUDA has measured whether the joint backward fits.
        self.sequential_backward = config.sequential_backward is not False
        self.backward_chooser = (gpu.BackwardChooser(device) if config.sequential_backward == "auto"
                                 and device.type == "cuda" else None)
        self.method = methods.create(config)
        self.dist = distributed.current()
        # The same initial weights on every process; its own crops, dropout and voxel samples on each.
        torch.manual_seed(config.seed)
        seed = rank_seed(config.seed, self.dist.rank)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.memory_format = memory_format(device)
        self.net_a, self.net_b = (n.to(device, memory_format=self.memory_format) for n in build_networks(
            num_classes, config.base_filters, config.resnet_blocks, config.dropout, kinds=self.method.network_kinds,
            decoder_dropout=self.method.decoder_dropout if config.decoder_dropout is None else config.decoder_dropout))
        if self.dist.rank:
            torch.manual_seed(seed)
        # Projection heads (ours' L_c) train with their network (one optimiser each) but are not in the model file.
        self.projectors: Optional[torch.nn.ModuleList] = None
        if self.method.projection_heads():
            self.projectors = torch.nn.ModuleList(
                ProjectionHead(config.base_filters, config.projection_channels) for _ in range(2)
            ).to(device, memory_format=self.memory_format)
        heads = list(self.projectors) if self.projectors is not None else [torch.nn.Identity()] * 2
        # One optimiser per trained network (a Mean Teacher's teacher has none: it follows by EMA).
        self.optimizers = [torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=config.lr,
                                           momentum=config.momentum, weight_decay=config.weight_decay)
                           for i, (net, head) in enumerate(zip((self.net_a, self.net_b), heads))
                           if i in self.method.trained_networks]
        # fp16 needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        patch = zyx(config.patch_size)
        level = config.augmentation or self.method.augmentation
        # The strong level on a CUDA GPU: windows cut on the host, resampled and augmented on the GPU (a CPU
        # core would not keep up with it). ``crops_on_device`` chooses otherwise (tests: the same on the CPU).
        self.crops_on_device = (device.type == "cuda" and level == "strong") if crops_on_device is None \
            else crops_on_device
        crop_device = device if self.crops_on_device else None
        self.labeled = PatchSampler(labeled, patch, self.rng, config.foreground_fraction, level, crop_device)
        self.unlabeled = (PatchSampler(unlabeled, patch, self.rng, 0.0, unlabeled_level(level, config.augment_unlabeled),
                                       crop_device)
                          if unlabeled and config.batch_unlabeled > 0 and self.method.uses_unlabeled else None)
        self._draw_batch = self._device_batch if self.crops_on_device else self._host_batch
        self.iteration = 0
        # "auto": also on CPUs for the strong augmentation, whose resampling then overlaps the step.
        use_thread = config.prefetch is True or (config.prefetch == "auto" and (
            device.type == "cuda" or level == "strong"))
        self.prefetcher = (Prefetcher(self._draw_batch, self.rng, gpu.thread_device_setup(device)) if use_thread
                           else None)
        self._replicate()

    def _replicate(self) -> None:
        """The one place that prepares the trained modules for several processes: forward passes go through
        ``self.replicas`` (DDP-wrapped networks and projection heads; the bare modules in one process), state
        dicts come from the bare modules."""
        sync = self.config.sync_batchnorm
        trained = self.method.trained_networks  # a teacher follows by EMA: not wrapped
        self.replicas = [self.dist.replicate(net, self.device, sync) if i in trained else net
                         for i, net in enumerate((self.net_a, self.net_b))]
        # Without unlabeled crops the heads' outputs are unused: DDP must not wait for their gradients then.
        self.head_replicas = None if self.projectors is None else [
            self.dist.replicate(head, self.device, sync, find_unused_parameters=self.unlabeled is None)
            for head in self.projectors]

    def networks(self):
        return self.net_a, self.net_b

    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.prefetcher.next() if self.prefetcher is not None else self._draw_batch()
        if self.crops_on_device:  # on the device, in the step's layout already
            return images, labels
        return (images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                labels.to(self.device, non_blocking=True).long())

    def _host_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next crops in host memory; for a GPU the labels as bytes (an eighth of int64 to copy) and both
        in pinned memory, so that the copy to the device runs asynchronously."""
        images, labels = self.labeled.sample(self.config.batch_labeled)
        if self.unlabeled is not None:
            unlabeled, _ = self.unlabeled.sample(self.config.batch_unlabeled)
            images = np.concatenate([images, unlabeled])
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        if self.device.type == "cuda":
            labels = labels.to(torch.uint8) if self.num_classes <= 256 else labels
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def _device_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next crops on the training's device (``crops_on_device``), labels int64, images in the step's
        memory format.

        On the batch thread this queues the augmentation's kernels on the thread's current stream: the GPU's
        default stream, the one the step runs on. That is safe without events: a stream runs its kernels in
        the order they were launched, and the step launches its first kernel on a batch only after this thread
        has launched every kernel that writes it (the prefetcher's future orders the two threads), so the step
        reads the batch complete; a freed batch's memory goes back to that same stream's pool, so whatever
        reuses it is launched, and runs, after the step's kernels that read it. This thread may wait for the
        GPU (MONAI's transforms copy a few values to and from the host); the step's thread does not, unless
        ``prefetch=false`` draws the batch there."""
        images, labels = self.labeled.sample(self.config.batch_labeled)
        if self.unlabeled is not None:
            images = torch.cat([images, self.unlabeled.sample(self.config.batch_unlabeled)[0]])
        return images.contiguous(memory_format=self.memory_format), labels

    def step(self) -> Dict[str, torch.Tensor]:
        """One iteration of the method; returns its loss terms as 0-dim tensors (no host sync here)."""
        config = self.config
        lr = learning_rate(config, self.iteration)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
        images, labels = self.next_batch()
        n = labels.shape[0]
        self.net_a.train()
        self.net_b.train()
        inputs = [images, images]
        if config.unlabeled_views and images.shape[0] > n:  # same labeled crops, own view of the unlabeled
            inputs = [torch.cat([images[:n], intensity_view(images[n:], self.generator)]) for _ in range(2)]
        terms = self.method.step(self, inputs, labels)
        self._optimizer_step()
        self.method.after_step(self)
        return terms

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            for opt in self.optimizers:
                self.scaler.step(opt)
            self.scaler.update()
        else:
            for opt in self.optimizers:
                opt.step()
        self.iteration += 1

    # ------------------------------------------------------------------- what a method uses (TrainerView)

    def forward(self, index: int, images: torch.Tensor, project: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of network ``index`` (0: A, 1: B); features through its projection head."""
        with autocast(self.device, self.amp_dtype):
            logits, features = self.replicas[index](images)
            if project and self.head_replicas is not None:
                features = self.head_replicas[index](features)
        return logits, features

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def dropout_state(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The generators that dropout draws from (the CPU's, and the GPU's when training on one)."""
        if self.device.type == "cuda":
            return torch.get_rng_state(), torch.cuda.get_rng_state(self.device)
        if self.device.type == "mps":
            return torch.get_rng_state(), torch.mps.get_rng_state()
        return torch.get_rng_state(), None

    def set_dropout_state(self, state: Tuple[torch.Tensor, Optional[torch.Tensor]]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state[1], self.device)
        elif state[1] is not None:
            torch.mps.set_rng_state(state[1])

    def restart_optimizer(self, index: int = 0) -> None:
        """Forgets optimiser ``index``'s momentum, as a new optimiser would start."""
        self.optimizers[index].state.clear()

    # ---------------------------------------------------------------------------------- state

    def random_state(self) -> Dict[str, Any]:
        """This process's random generators (crops, dropout, voxel samples)."""
        numpy_state = self.prefetcher.rng_state() if self.prefetcher is not None else json.dumps(
            self.rng.bit_generator.state)
        state = {"rng_numpy": numpy_state, "rng_torch": torch.get_rng_state(),
                 "rng_generator": self.generator.get_state()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_random_state(self, state: Dict[str, Any]) -> str:
        """Takes back the generators of ``state``; returns a note (else "") when the device generator's
        state was saved on another kind of device (a CUDA state is 16 bytes, a CPU one 5056), whose
        generators are then seeded afresh."""
        if self.prefetcher is not None:
            self.prefetcher.reset()
        self.rng.bit_generator.state = json.loads(state["rng_numpy"])
        torch.set_rng_state(state["rng_torch"])
        saved = state["rng_generator"]
        if saved.numel() != self.generator.get_state().numel() or (
                self.device.type == "cuda") != ("rng_cuda" in state):
            self.reseed(rank_seed(self.config.seed + int(state.get("iteration", 0)), self.dist.rank), numpy=False)
            return (f" The checkpoint's random state is of another kind of device than {self.device}: the "
                    f"dropout and voxel samples from here on come from a fresh seed and differ from an "
                    f"uninterrupted run.")
        self.generator.set_state(saved)
        if "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        return ""

    def reseed(self, seed: int, numpy: bool = True) -> None:
        """Fresh random streams from ``seed``: the device generator, torch's global ones, and (``numpy``)
        the crops (in place: the samplers hold this generator)."""
        if numpy:
            if self.prefetcher is not None:
                self.prefetcher.reset()
            self.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)  # the CPU's and every GPU's

    def state(self) -> Dict[str, Any]:
        state = {
            "iteration": self.iteration,
            "weights_a": self.net_a.state_dict(), "weights_b": self.net_b.state_dict(),
            "optimizer_a": self.optimizers[0].state_dict(),
            "optimizer_b": self.optimizers[1].state_dict() if len(self.optimizers) > 1 else None,
            **self.random_state(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.projectors is not None:
            state["projectors"] = self.projectors.state_dict()
        method_state = self.method.state()
        if method_state:
            state["method_state"] = method_state
        return state

    def load_state(self, state: Dict[str, Any]) -> str:
        """Takes back a checkpoint; returns :meth:`load_random_state`'s note."""
        self.net_a.load_state_dict(state["weights_a"])
        self.net_b.load_state_dict(state["weights_b"])
        for opt, key in zip(self.optimizers, ("optimizer_a", "optimizer_b")):
            opt.load_state_dict(state[key])
        note = self.load_random_state(state)
        if "scaler" in state and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if "projectors" in state and self.projectors is not None:
            self.projectors.load_state_dict(state["projectors"])
        if "method_state" in state:
            self.method.load_state(state["method_state"])
        self.iteration = int(state["iteration"])
        return note

    def load_weights(self, weights_a: Dict[str, torch.Tensor], weights_b: Dict[str, torch.Tensor]) -> None:
        self.net_a.load_state_dict(weights_a)
        self.net_b.load_state_dict(weights_b)


# ------------------------------------------------------------------------------------------ public API

def model_metadata(config: TrainConfig, manifest: Manifest, labeled: list, unlabeled: list, iteration: int,
                   device: torch.device, geometry_meta: Dict[str, Any], processes: int = 1) -> Dict[str, Any]:
    """``geometry_meta``: the geometry stage's record of the grid the cases were loaded on (from
    :func:`geometry.training_spacing` at the start, not read again from headers that may have changed)."""
    classes = [dict(c.to_dict(), color=class_color(manifest.classes, i) if i else [0.0, 0.0, 0.0])
               for i, c in enumerate(manifest.classes)]
    preset_defaults = preset_config(config.preset).to_dict() if config.preset else {}
    method = methods.create(config)
    overrides = {k: v for k, v in config.to_dict().items() if preset_defaults.get(k) != v}
    spacings = np.array([c.geometry.spacing for c in labeled + unlabeled])  # the grids the networks saw
    return {
        "classes": classes,
        "modality": manifest.modality,
        "normalization": {"method": normalization_for(manifest.modality, config.normalization),
                          "ct_window": list(config.ct_window)},
        "patch_size": list(config.patch_size),
        "spacing": [float(s) for s in np.median(spacings, axis=0)],
        "geometry": geometry_meta,
        "preset": config.preset,
        "overrides": overrides,
        "config": config.to_dict(),
        "networks": dict(zip("ab", method.network_kinds), base_filters=config.base_filters,
                         resnet_blocks=list(config.resnet_blocks), in_channels=1),
        "inference": method.inference_networks(),
        "training": {"iterations": iteration, "labeled_cases": len(labeled), "unlabeled_cases": len(unlabeled),
                     "device": str(device), "processes": processes,
                     "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }


def _validate(run: "Run", metadata: Dict[str, Any], model_path: str) -> None:
    """Segments the held-out cases with the model file just written and reports their Dice: a ``validation``
    event, ``validation.json`` and the model file's metadata (``semisupseg info`` shows it)."""
    from .evaluation import describe_validation, validate_held_out

    trainer, output_dir = run.trainer, run.output_dir
    run.reporter.emit("start", "validate",
                      message=f"Segmenting the {len(run.held_out)} held-out case(s) to validate...")
    validation = validate_held_out(model_path, run.held_out, run.manifest.classes, str(trainer.device))
    validation.update(method=trainer.config.method, iterations=trainer.iteration)
    with disk_errors(output_dir, "the validation"):
        write_text_atomic(os.path.join(output_dir, VALIDATION_NAME), json.dumps(validation, indent=2))
        save_model(model_path, trainer.net_a.state_dict(), trainer.net_b.state_dict(),
                   dict(metadata, validation=validation))
    run.reporter.emit("validation", "train", path=os.path.join(output_dir, VALIDATION_NAME),
                      message=describe_validation(validation), **validation)


def _image_paths(manifest: Manifest) -> list:
    """The images training reads (their headers decide the target spacing)."""
    return [e.image for e in manifest.labeled_cases + manifest.unlabeled_cases]


def train(manifest_path: Union[str, Manifest, None], output_dir: str, config: Optional[TrainConfig] = None,
          progress: str = "bar", callback: Optional[Callable[[dict], None]] = None,
          init_model: Optional[str] = None, resume: bool = False,
          cancel_event: Optional[threading.Event] = None, log_every: int = 10,
          stop_file: Optional[str] = None, run_settings: Optional[Dict[str, Any]] = None) -> str:
    """Trains both networks and writes ``output_dir/model.pt``; returns its path. ``manifest_path``: a
    manifest file, a dataset folder (see :mod:`.layouts`) or a :class:`Manifest`; without ``config`` the
    default preset (:data:`config.DEFAULT_PRESET`, which trains :data:`config.DEFAULT_METHOD`).

    ``resume=True`` continues the checkpoint in ``output_dir`` (manifest and settings come from it) with the
    same iteration count, schedules, optimiser and random states: the result equals an uninterrupted run. A
    training killed before its first checkpoint starts again from iteration 0 with the settings and cases
    the folder records; ``run_settings`` may change how it runs (:data:`config.RUN_SETTINGS`, e.g. another
    device). ``init_model`` starts from a model file's weights (retraining after corrections).
    SIGINT/SIGTERM, ``cancel_event`` or the file ``stop_file`` appearing write a checkpoint and raise
    :class:`Cancelled`. A folder that this call created is removed again when the training fails before
    writing anything into it.

    Started by ``torchrun`` (several processes), every process calls this with the same arguments: rank 0
    takes the folder's lock, reads what to resume from and shares it; each process trains on its own crops;
    rank 0 alone writes the log, progress events, checkpoints and the model file.
    """
    output_dir = os.path.abspath(output_dir)
    created = False
    try:
        with distributed.session() as group, StopRequest(cancel_event, stop_file) as stop, \
                contextlib.ExitStack() as folder_hold:
            reporter = Reporter(progress, callback) if group.is_main else Reporter("none")
            start = None
            if group.is_main:
                try:
                    start = _open_run_folder(output_dir, folder_hold, manifest_path, config, init_model, resume,
                                             run_settings)
                except Exception as e:
                    group.broadcast({"error": str(e), "bad_input": isinstance(e, InputError)})
                    raise
            start = group.broadcast(start)
            if "error" in start:
                if start["bad_input"]:
                    raise InputError(start["error"])
                raise DistributedError(f"Process 0 failed to start the training ({start['error']}).")
            created = group.is_main and start["created"]
            return _train_from(start, output_dir, group, reporter, stop, log_every)
    except BaseException:
        if created:  # the lock is gone by now
            remove_if_empty(output_dir)
        raise


def _open_run_folder(output_dir: str, hold: contextlib.ExitStack, manifest_path: Union[str, Manifest, None],
                     config: Optional[TrainConfig], init_model: Optional[str], resume: bool,
                     run_settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Rank 0's part of the start: the folder checked and locked (``hold`` keeps the lock), and what the
    training starts from: ``{"config", "manifest", "checkpoint", "init_model", "note", "created"}``."""
    if resume and not os.path.isdir(output_dir):
        raise InputError(f"The folder {output_dir} does not exist; give the output folder of the stopped "
                         f"training to resume.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise InputError(f"The output {output_dir} is a file, not a folder; choose a folder for the training.")
    created = not os.path.exists(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise InputError(f"Cannot create the output folder {output_dir} ({e.strerror}); choose another "
                         f"folder.") from None
    try:
        hold.enter_context(TrainingLock(output_dir))
        remove_partial_files(output_dir)
        if resume:
            start = resume_point(output_dir)
            start["config"] = with_run_settings(start["config"], run_settings)
        else:
            if manifest_path is None:
                raise InputError("Give a manifest (--manifest) to train on, or --resume a stopped training.")
            manifest = manifest_path if isinstance(manifest_path, Manifest) else load_cases(manifest_path)
            start = {"config": config or preset_config(DEFAULT_PRESET), "manifest": manifest,
                     "checkpoint": None, "init_model": init_model, "note": ""}
        start["config"].validate()
        hold_out(start["manifest"], start["config"].validate_cases)  # enough labeled cases left to train on?
    except BaseException:
        hold.close()  # the lock goes before the folder it lives in
        if created:
            remove_if_empty(output_dir)
        raise
    start["created"] = created
    return start


def _train_from(start: Dict[str, Any], output_dir: str, group: "distributed.Context", reporter: Reporter,
                stop: StopRequest, log_every: int) -> str:
    config, manifest, checkpoint = start["config"], start["manifest"], start["checkpoint"]
    device = select_device(distributed.training_device(config.device))
    # The held-out cases (--validate) are out of everything training reads, the target spacing included.
    training_manifest, held_out = hold_out(manifest, config.validate_cases)
    spacing, geometry_meta = geometry.training_spacing(config.target_spacing,
                                                       fileio.read_headers(_image_paths(training_manifest)))
    labeled, unlabeled = load_training_cases(
        training_manifest, normalization_for(manifest.modality, config.normalization), config.ct_window,
        canonical=True, target_spacing=spacing)
    trainer = Trainer(config, len(manifest.classes), labeled, unlabeled, device)
    note = start["note"]
    if group.enabled:
        note += (f" {group.world_size} processes ({group.backend or 'torch.distributed'}), "
                 f"{config.batch_labeled}+{config.batch_unlabeled} crops each "
                 f"(global batch {group.world_size * config.batch_labeled}+{group.world_size * config.batch_unlabeled}).")
        if config.sync_batchnorm and device.type != "cuda":
            note += " Batch norm per process: torch synchronises batch norm on GPUs only."
    if checkpoint is not None:
        note += trainer.load_state(checkpoint)
        note += _load_rank_random_state(trainer, checkpoint)
    elif start["init_model"]:
        _init_from_model(trainer, start["init_model"], manifest)
    init_model, resumed = start["init_model"], checkpoint is not None
    start.clear()  # the checkpoint's tensors now live in the trainer; free the copy
    del checkpoint
    if group.is_main:
        log_path = os.path.join(output_dir, LOG_NAME)
        if resumed:
            trim_log(log_path, trainer.iteration)
        else:  # a new training, or one restarted from iteration 0: a new log, and the record of its start
            for stale in (log_path, os.path.join(output_dir, VALIDATION_NAME)):
                if os.path.exists(stale):
                    os.remove(stale)
            write_run_record(output_dir, config, manifest, init_model)
    return _run(Run(trainer, manifest, labeled, unlabeled, geometry_meta, output_dir, reporter, stop, log_every,
                    note, list(held_out or [])))


def _load_rank_random_state(trainer: "Trainer", checkpoint: Dict[str, Any]) -> str:
    """Each process takes back its own random generators (rank 0's are the checkpoint's own); a checkpoint
    of another number of processes gives the other ranks fresh streams (the note says so)."""
    ranks = checkpoint.get("rng_ranks")
    group = trainer.dist
    if ranks is not None and len(ranks) == group.world_size:
        return trainer.load_random_state(dict(ranks[group.rank], iteration=trainer.iteration)) if group.rank else ""
    if not group.enabled and ranks is None:
        return ""
    if group.rank:
        trainer.reseed(rank_seed(trainer.config.seed + trainer.iteration, group.rank))
    saved = len(ranks) if ranks is not None else 1
    return (f" The checkpoint was written by {saved} process(es) and {group.world_size} resume it: the crops "
            f"from here on differ from an uninterrupted run.")


def out_of_memory_message(trainer: Trainer, output_dir: str) -> str:
    """One sentence: where memory ran out, the setting that helps most, and whether the checkpoints are kept."""
    config = trainer.config
    kept = os.path.exists(os.path.join(output_dir, CHECKPOINT_NAME))
    where = (f"at iteration {trainer.iteration + 1} (patch size {tuple(config.patch_size)}, batch "
             f"{config.batch_labeled}+{config.batch_unlabeled}")
    if trainer.method.joint_backward(trainer):
        helps = ("back-propagate one network at a time, about half the peak memory: " +
                 (f"'semisupseg train --resume {output_dir} --set sequential_backward=true'" if kept else
                  "train again with --set sequential_backward=true"))
    else:
        helps = ("train again with a smaller preset or patch (e.g. --preset cpu-fast or --set "
                 "patch_size=[64,64,48]) or on another device")
    return (f"The {trainer.device} ran out of memory {where}, {precision_name(trainer.amp_dtype)}); {helps}"
            f"{'; the checkpoints in ' + output_dir + ' are kept' if kept else ''}.")


def _init_from_model(trainer: Trainer, path: str, manifest: Manifest) -> None:
    data = load_trusted_data(path)
    meta = data.get("metadata") or {}
    if [c["value"] for c in meta.get("classes", [])] != manifest.class_values:
        raise InputError(f"The model file {path} was trained for other classes than the manifest's; retrain "
                         f"from scratch or use a manifest with the model's classes.")
    networks = meta.get("networks") or {}
    kinds = (networks.get("a", NETWORK_KINDS[0]), networks.get("b", NETWORK_KINDS[1]))
    wanted = trainer.method.network_kinds
    if kinds != wanted:
        method = (meta.get("config") or {}).get("method", "?")
        raise InputError(f"The model file {path} holds the networks {'+'.join(kinds)} of the method {method}, but "
                         f"method {trainer.config.method} trains {'+'.join(wanted)}; train with --set "
                         f"method={method} to start from it, or start without --init-model.")
    try:
        trainer.load_weights(data["weights_a"], data["weights_b"])
    except (KeyError, RuntimeError):
        raise InputError(f"The model file {path} has networks of another size than this preset's; use the "
                         f"preset it was trained with ({meta.get('preset')}).") from None


@dataclasses.dataclass
class Run:
    """One training as its loop sees it: the trainer, what it trains on, where it writes, whom it tells."""
    trainer: Trainer
    manifest: Manifest
    labeled: list
    unlabeled: list
    geometry_meta: Dict[str, Any]   # the geometry stage's record of the grid the cases were loaded on
    output_dir: str
    reporter: Reporter
    stop: StopRequest
    log_every: int
    note: str = ""                  # said once in the start event
    held_out: List[CaseEntry] = dataclasses.field(default_factory=list)   # validated after training

    @property
    def config(self) -> TrainConfig:
        return self.trainer.config

    @property
    def group(self) -> "distributed.Context":
        return self.trainer.dist


def _run(run: Run) -> str:
    try:
        return _loop(run, CheckpointClock(run.config.checkpoint_every, run.config.checkpoint_minutes))
    except Exception as e:
        if run.group.enabled and distributed.is_peer_failure(e):
            raise distributed.peer_failure(run.group, e) from None
        raise


def _checkpoint(run: Run, clock: CheckpointClock) -> Optional[str]:
    """Every process takes part (each one's random state goes in); rank 0 writes; all wait for it."""
    trainer, group = run.trainer, run.group
    ranks = group.gather(trainer.random_state()) if group.enabled else None
    path = None
    if group.is_main:
        payload = dict(trainer.state(), format=CHECKPOINT_FORMAT, config=run.config.to_dict(),
                       manifest=manifest_to_dict(run.manifest), manifest_path=run.manifest.path or "")
        if ranks is not None:
            payload["rng_ranks"] = ranks
        with disk_errors(run.output_dir, "the checkpoint"):
            path = write_checkpoint(run.output_dir, payload)
        run.reporter.emit("checkpoint", "train", iteration=trainer.iteration, path=path)
    group.barrier()
    clock.written()
    return path


def _start_event(run: Run, first: int) -> None:
    trainer, config = run.trainer, run.config
    what = f"Resuming at iteration {first} of {config.iterations}" if first else "Training"
    precision = precision_name(trainer.amp_dtype)
    held = f" Held out to validate: {', '.join(e.id for e in run.held_out)}." if run.held_out else ""
    run.reporter.emit("start", "train", iteration=first, total=config.iterations, device=str(trainer.device),
                      precision=precision,
                      message=f"{what} on {trainer.device} in {precision} ({len(run.labeled)} labeled, "
                              f"{len(run.unlabeled)} unlabeled cases, preset {config.preset or 'none'}, "
                              f"{config.iterations} iterations).{run.note}{held}")


def _step(run: Run) -> Dict[str, torch.Tensor]:
    """One iteration; running out of memory becomes one sentence (and ends the other processes' wait)."""
    try:
        return run.trainer.step()
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        if run.group.enabled:  # the other processes wait in a collective: end it for them now
            distributed.abort()
        raise MemoryError(out_of_memory_message(run.trainer, run.output_dir)) from None


def _report(run: Run, terms: Dict[str, torch.Tensor], first: int, log) -> None:
    """A progress event; every ``log_every`` iterations (and the first and last) with the losses, logged."""
    it, total = run.trainer.iteration, run.config.iterations
    if not (it % run.log_every == 0 or it == total or it == first + 1):
        run.reporter.progress("train", it, total, first)
        return
    values = {k: round(float(v), 5) for k, v in terms.items()}
    if not np.isfinite(values["loss"]):  # the loss is the global batch's: all processes agree
        raise InputError(f"Training diverged at iteration {it} (loss is not finite); lower the "
                         f"learning rate (--set lr=0.001) or check the images' intensities.")
    stats = {k: values.pop(k) for k in STAT_KEYS if k in values}
    event = run.reporter.progress("train", it, total, first, losses=values, stats=stats,
                                  lr=learning_rate(run.config, it - 1))
    if log is not None:
        log.write(json.dumps(event) + "\n")
        log.flush()


def _loop(run: Run, clock: CheckpointClock) -> str:
    trainer, config, group = run.trainer, run.config, run.group
    first = trainer.iteration
    _start_event(run, first)
    with (open(os.path.join(run.output_dir, LOG_NAME), "a") if group.is_main else contextlib.nullcontext()) as log:
        while trainer.iteration < config.iterations:
            # One all-reduce: a stop asked of any process, or any process's clock, acts on all of them here.
            stop_now, time_is_up = group.any(run.stop.requested, clock.time_is_up())
            if stop_now:
                path = _checkpoint(run, clock)
                run.stop.consume()
                run.reporter.emit("cancelled", "train", iteration=trainer.iteration, checkpoint=path,
                                  message=f"Cancelled at iteration {trainer.iteration}; resume with "
                                          f"'semisupseg train --resume {run.output_dir}'.")
                raise Cancelled()
            if time_is_up and trainer.iteration > first:
                _checkpoint(run, clock)
            _report(run, _step(run), first, log)
            if clock.counts(trainer.iteration) and trainer.iteration < config.iterations:
                _checkpoint(run, clock)
    return _finish(run, clock)


def _finish(run: Run, clock: CheckpointClock) -> str:
    """The model file, the last checkpoint, then the held-out cases' validation."""
    trainer, config, group = run.trainer, run.config, run.group
    model_path = os.path.join(run.output_dir, MODEL_NAME)
    if group.is_main:
        metadata = model_metadata(config, run.manifest, run.labeled, run.unlabeled, trainer.iteration,
                                  trainer.device, run.geometry_meta, group.world_size)
        with disk_errors(run.output_dir, "the model file"):
            save_model(model_path, trainer.net_a.state_dict(), trainer.net_b.state_dict(), metadata)
    _checkpoint(run, clock)
    if run.held_out and group.is_main:  # after the final checkpoint: a kill here resumes straight into validation
        _validate(run, metadata, model_path)
    run.reporter.emit("done", "train", iteration=trainer.iteration, total=config.iterations, model=model_path,
                      message=f"Model file written: {model_path}")
    return model_path
