"""The training loop: both networks, the paper's losses, schedules, mixed precision, checkpoints, resume,
cancel and progress events.

An output folder holds ``model.pt`` (the model file, written at the end), ``checkpoint.pt`` (and the one
before it, ``checkpoint.prev.pt``), ``config.json``, ``log.jsonl`` (every progress event) and, while a
training runs, ``.lock``.
"""

import contextlib
import datetime
import errno
import json
import os
import signal
import threading
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch

from . import geometry, losses
from .config import TrainConfig, preset_config, zyx
from .data import PatchSampler, load_training_cases, normalization_for
from .devices import autocast, autocast_dtype, memory_format, select_device
from .errors import Cancelled, InputError, is_out_of_memory
from .manifest import Manifest, class_color, load_manifest, manifest_to_dict, parse_manifest
from .modelfile import PARTIAL_MARK, load_trusted_data, save_model, save_temporary
from .networks import ProjectionHead, build_networks
from .progress import Reporter
from .views import intensity_view

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

MODEL_NAME = "model.pt"
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
LOCK_NAME = ".lock"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"
CHECKPOINT_FORMAT = "semisupseg-checkpoint"
# Logged beside the losses, but not losses: progress events carry them under "stats".
STAT_KEYS = ("reliable_fraction", "mdiff_voxels", "lambda_c", "lambda_u")


# ------------------------------------------------------------------------------------------- the step

def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The paper's step schedule: lr ÷10 every ``lr_step`` iterations."""
    return config.lr * config.lr_gamma ** (iteration // config.lr_step)


class PseudoTargets(NamedTuple):
    """What both networks learn from on the unlabeled crops (all detached): the pseudo label, the reliable
    voxels of the entropy filter, and M_diff (None without L_reg)."""
    pseudo: torch.Tensor
    reliable: torch.Tensor
    mdiff: Optional[torch.Tensor]


def uses_unlabeled_terms(config: TrainConfig) -> bool:
    return config.method == "ours" and (config.use_unsupervised or config.use_regularization
                                        or config.use_contrastive)


def loss_weights(config: TrainConfig, iteration: int) -> Tuple[float, float]:
    """(λu, λc) of Eq. 3 at this iteration."""
    lam_c = losses.lambda_c(iteration, config.iterations, config.lambda_c_schedule, config.lambda_c_max)
    lam_u = config.lambda_u
    if config.lambda_u_rampup > 0:  # the same sigmoid ramp-up as λc, over the first share of training
        lam_u *= losses.lambda_c(iteration, max(1, int(config.lambda_u_rampup * config.iterations)), "rampup", 1.0)
    return lam_u, lam_c


def pseudo_targets(config: TrainConfig, iteration: int, num_classes: int, probs: Tuple[torch.Tensor, torch.Tensor],
                   supervised: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[PseudoTargets, Dict[str, torch.Tensor]]:
    """The pseudo label comes from the network with the lower supervised loss; the entropy filter splits the
    unlabeled voxels into reliable (L_u, prototypes) and unreliable (L_c); M_diff holds the voxels where both
    networks are confident and disagree (Eq. 4). ``probs`` are both networks' softmax on the unlabeled crops."""
    probs = tuple(p.detach() for p in probs)
    pseudo, winner_probs = losses.select_pseudo_labels(probs[0], probs[1], supervised[0].detach(),
                                                       supervised[1].detach())
    entropy = losses.voxel_entropy(winner_probs)
    if config.reliability == "class":
        reliable = losses.reliable_mask_per_class(entropy, pseudo, config.reliable_fraction, num_classes)
    else:
        reliable = losses.reliable_mask(entropy, config.reliable_fraction)
    stats = {"reliable_fraction": reliable.float().mean()}
    mdiff = None
    if config.use_regularization:
        threshold = losses.confidence_threshold(iteration, config.iterations, config.threshold_start,
                                                config.threshold_end)
        mdiff = losses.disagreement_mask(probs[0], probs[1], threshold)
        stats["mdiff_voxels"] = mdiff.sum().float()
    lam_u, lam_c = loss_weights(config, iteration)
    stats["lambda_u"], stats["lambda_c"] = torch.tensor(lam_u), torch.tensor(lam_c)
    return PseudoTargets(pseudo, reliable, mdiff), stats


def network_terms(config: TrainConfig, iteration: int, num_classes: int, labeled_count: int, labels: torch.Tensor,
                  logits: torch.Tensor, features: torch.Tensor, other_probs: torch.Tensor, targets: PseudoTargets,
                  generator: torch.Generator, name: str) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """λu·(L_u + L_reg) + λc·L_c of Eq. 3 as they reach ONE network (``name`` "a" or "b"), with gradient.

    ``logits``/``features`` are this network's over the whole batch, labeled crops first; ``other_probs`` is
    the other network's softmax on the unlabeled crops, a constant here. L_reg depends on both networks, so
    each network's share holds all of it: its gradient with respect to this network is the joint loss's, and
    summing both shares counts L_reg's value twice (:meth:`Trainer.step` reports it once).
    """
    n = labeled_count
    logits_u = logits[n:].float()
    zero = logits_u.sum() * 0.0
    lam_u, lam_c = loss_weights(config, iteration)
    stats: Dict[str, torch.Tensor] = {}
    total_u = zero
    if config.use_unsupervised:
        stats[f"unsup_{name}"] = losses.unsupervised_loss(logits_u, targets.pseudo, targets.reliable, num_classes)
        total_u = total_u + stats[f"unsup_{name}"]
    if config.use_regularization:
        stats["reg"] = losses.regularization_loss(torch.softmax(logits_u, dim=1), other_probs.detach(), targets.mdiff,
                                                  config.regularization_average)
        total_u = total_u + stats["reg"]
    total_c = zero
    if config.use_contrastive:
        feat = features.float()
        if config.prototypes_from_labeled:  # ground truth is the most reliable label there is
            proto_feat = feat
            proto_labels = torch.cat([labels, targets.pseudo])
            proto_mask = torch.cat([torch.ones_like(labels, dtype=torch.bool), targets.reliable])
        else:
            proto_feat, proto_labels, proto_mask = feat[n:], targets.pseudo, targets.reliable
        prototypes, present = losses.class_prototypes(proto_feat, proto_labels, proto_mask, num_classes, detach=False)
        stats[f"contrast_{name}"] = losses.contrastive_loss(
            feat[n:], targets.pseudo, ~targets.reliable, prototypes, present, config.contrastive_temperature,
            config.contrastive_max_voxels, config.prototype_margin, generator)
        total_c = stats[f"contrast_{name}"]
    return lam_u * total_u + lam_c * total_c, stats


def reference_correction(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor,
                         threshold: float = 0.6, weight: float = 0.5) -> torch.Tensor:
    """The released reference code's only extra trained term (for comparison, not the paper): on the
    labeled crops, squared error between each network's softmax and the ground truth over voxels where
    exactly one network predicts foreground (1 - p(background)) with probability >= 0.6."""
    probs = [torch.softmax(lg.float(), 1) for lg in (logits_a, logits_b)]
    confident = [(1.0 - p[:, 0]) >= threshold for p in probs]
    mask = (confident[0] ^ confident[1]).unsqueeze(1).float()
    target = torch.nn.functional.one_hot(labels, probs[0].shape[1]).movedim(-1, 1).float()
    count = mask.sum().clamp_min(1.0) * probs[0].shape[1]
    return weight * sum(((p - target) ** 2 * mask).sum() / count for p in probs)


class Trainer:
    """Both networks, their optimisers and the data; :meth:`step` runs one iteration of Eq. 3."""

    def __init__(self, config: TrainConfig, num_classes: int, labeled: list, unlabeled: list,
                 device: torch.device):
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.amp_dtype = autocast_dtype(device, config.amp, training=True)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        self.memory_format = memory_format(device)
        self.net_a, self.net_b = (n.to(device, memory_format=self.memory_format) for n in build_networks(
            num_classes, config.base_filters, config.resnet_blocks, config.dropout))
        # L_c's projection heads train with their network (one optimiser each) but are not in the model file.
        self.projectors: Optional[torch.nn.ModuleList] = None
        if config.method == "ours" and config.use_contrastive and config.projection_channels > 0:
            self.projectors = torch.nn.ModuleList(
                ProjectionHead(config.base_filters, config.projection_channels) for _ in range(2)
            ).to(device, memory_format=self.memory_format)
        heads = list(self.projectors) if self.projectors is not None else [torch.nn.Identity()] * 2
        self.optimizers = [torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=config.lr,
                                           momentum=config.momentum, weight_decay=config.weight_decay)
                           for net, head in zip((self.net_a, self.net_b), heads)]
        # fp16 needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        patch = zyx(config.patch_size)
        self.labeled = PatchSampler(labeled, patch, self.rng, config.foreground_fraction, config.augment)
        self.unlabeled = (PatchSampler(unlabeled, patch, self.rng, 0.0, config.augment)
                          if unlabeled and config.batch_unlabeled > 0 and config.method == "ours" else None)
        self.iteration = 0

    def networks(self):
        return self.net_a, self.net_b

    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.labeled.sample(self.config.batch_labeled)
        if self.unlabeled is not None:
            unlabeled, _ = self.unlabeled.sample(self.config.batch_unlabeled)
            images = np.concatenate([images, unlabeled])
        return (torch.from_numpy(images).to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                torch.from_numpy(labels).to(self.device, non_blocking=True))

    def step(self) -> Dict[str, torch.Tensor]:
        """One iteration; returns the loss terms as 0-dim tensors (no host sync here).

        With ``sequential_backward`` (method "ours") the networks back-propagate one after the other, so only
        one network's graph is alive at a time: Subnet A first runs without gradient (for the pseudo label and
        L_reg's other half), B runs, computes its loss and back-propagates, then A runs again with gradient
        from the same random state and batch-norm statistics (the same outputs) and back-propagates. Each
        network's loss reaches the other only through constants (the pseudo label, the other softmax), so
        the gradients are the joint loss's.
        """
        config, it = self.config, self.iteration
        lr = learning_rate(config, it)
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
        semi = uses_unlabeled_terms(config) and images.shape[0] > n
        sequential = semi and config.sequential_backward
        if sequential:
            random_before_a, buffers_a = self._random_state(), [b.clone() for b in self.net_a.buffers()]
            with torch.no_grad():
                logits_a = self._forward(0, inputs[0], project=False)[0]
        else:
            logits_a, feat_a = self._forward(0, inputs[0])
        logits_b, feat_b = self._forward(1, inputs[1])
        sup_a = losses.supervised_loss(logits_a[:n].float(), labels, self.num_classes)
        sup_b = losses.supervised_loss(logits_b[:n].float(), labels, self.num_classes)
        if semi:
            probs = tuple(torch.softmax(lg[n:].float().detach(), dim=1) for lg in (logits_a, logits_b))
            targets, stats = pseudo_targets(config, it, self.num_classes, probs, (sup_a, sup_b))
            extra_b, stats_b = network_terms(config, it, self.num_classes, n, labels, logits_b, feat_b, probs[0],
                                             targets, self.generator, "b")
            if sequential:
                self._backward(sup_b + extra_b)
                random_after_b = self._random_state()
                del logits_b, feat_b  # B's graph is gone; free its outputs before A's graph is built
                self._set_random_state(random_before_a)
                for saved, buffer in zip(buffers_a, self.net_a.buffers()):
                    buffer.copy_(saved)
                logits_a, feat_a = self._forward(0, inputs[0])
                sup_a = losses.supervised_loss(logits_a[:n].float(), labels, self.num_classes)
            extra_a, stats_a = network_terms(config, it, self.num_classes, n, labels, logits_a, feat_a, probs[1],
                                             targets, self.generator, "a")
            if sequential:
                self._backward(sup_a + extra_a)
                self._set_random_state(random_after_b)
            else:
                self._backward(sup_a + sup_b + extra_a + extra_b)
            stats.update(stats_a)
            stats.update(stats_b)
            loss = (sup_a + sup_b + extra_a + extra_b).detach()  # for the log: the backward passes are done
            if "reg" in stats:  # each network's share holds all of L_reg; the loss counts it once
                loss = loss - loss_weights(config, it)[0] * stats["reg"].detach()
        else:
            if config.method == "reference":
                stats = {"correction": reference_correction(logits_a[:n], logits_b[:n], labels)}
            else:
                stats = {}
            loss = sup_a + sup_b + sum(stats.values(), torch.zeros((), device=sup_a.device))
            self._backward(loss)
        if self.scaler is not None:
            for opt in self.optimizers:
                self.scaler.step(opt)
            self.scaler.update()
        else:
            for opt in self.optimizers:
                opt.step()
        self.iteration += 1
        return {"loss": loss.detach(), "sup_a": sup_a.detach(), "sup_b": sup_b.detach(),
                **{k: v.detach() for k, v in stats.items()}}

    def _forward(self, index: int, images: torch.Tensor, project: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of network ``index`` (0: A, 1: B); features through its projection head."""
        with autocast(self.device, self.amp_dtype):
            logits, features = self.networks()[index](images)
            if project and self.projectors is not None:
                features = self.projectors[index](features)
        return logits, features

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def _random_state(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The generators that dropout draws from (the CPU's, and the GPU's when training on one)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set_random_state(self, state: Tuple[torch.Tensor, Optional[torch.Tensor]]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    # ---------------------------------------------------------------------------------- state

    def state(self) -> Dict[str, Any]:
        state = {
            "iteration": self.iteration,
            "weights_a": self.net_a.state_dict(), "weights_b": self.net_b.state_dict(),
            "optimizer_a": self.optimizers[0].state_dict(), "optimizer_b": self.optimizers[1].state_dict(),
            "rng_numpy": json.dumps(self.rng.bit_generator.state),
            "rng_torch": torch.get_rng_state(), "rng_generator": self.generator.get_state(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.projectors is not None:
            state["projectors"] = self.projectors.state_dict()
        return state

    def load_state(self, state: Dict[str, Any]) -> None:
        self.net_a.load_state_dict(state["weights_a"])
        self.net_b.load_state_dict(state["weights_b"])
        self.optimizers[0].load_state_dict(state["optimizer_a"])
        self.optimizers[1].load_state_dict(state["optimizer_b"])
        self.rng.bit_generator.state = json.loads(state["rng_numpy"])
        torch.set_rng_state(state["rng_torch"])
        self.generator.set_state(state["rng_generator"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if "scaler" in state and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if "projectors" in state and self.projectors is not None:
            self.projectors.load_state_dict(state["projectors"])
        self.iteration = int(state["iteration"])

    def load_weights(self, weights_a: Dict[str, torch.Tensor], weights_b: Dict[str, torch.Tensor]) -> None:
        self.net_a.load_state_dict(weights_a)
        self.net_b.load_state_dict(weights_b)


# --------------------------------------------------------------------------------- folder handling

class TrainingLock:
    """One training per output folder.

    ``.lock`` holds the owner's pid (for the message). Where the operating system offers ``flock`` the
    lock is the kernel's: it ends with the process however the process ends (SIGKILL, a crash, a power
    cut), so a lock left by a dead training is taken over, and a reused pid can never keep a folder locked.
    Elsewhere (Windows, file systems without locks) the pid decides: a lock whose process is gone is stale.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: Optional[int] = None

    def __enter__(self):
        if fcntl is not None and self._acquire_flock():
            return self
        self._acquire_pidfile()
        return self

    def _cannot_write(self, error: OSError):
        return InputError(f"Cannot write into the output folder {self.folder} ({error.strerror}); choose a "
                          f"folder you can write to.")

    def _refuse(self, owner: Optional[int]):
        who = f" (process {owner})" if owner else ""
        return InputError(f"The folder {self.folder} is in use by a training that is still running{who}; wait "
                          f"for it, cancel it, or choose another output folder.")

    def _acquire_flock(self) -> bool:
        """Takes the kernel lock; False when this file system has none (then the pid file decides)."""
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise self._cannot_write(e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise self._refuse(self._owner()) from None
                return False  # ENOLCK, EOPNOTSUPP...: no locks on this file system
            try:  # the holder may have removed the file between our open and our lock: lock the new one
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return True
        raise InputError(f"Cannot take the lock {self.path}; remove it if no training runs there.")

    def _acquire_pidfile(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise self._refuse(owner) from None
                try:
                    os.remove(self.path)  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            except OSError as e:
                raise self._cannot_write(e) from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return
        raise InputError(f"Cannot take the lock {self.path}; remove it if no training runs there.")

    def _owner(self) -> Optional[int]:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        if self._fd is not None:
            try:
                os.remove(self.path)  # while still holding the lock, so no one else's lock is removed
            except OSError:
                pass
            os.close(self._fd)  # releases the kernel lock
            self._fd = None
        elif self._owner() == os.getpid():
            os.remove(self.path)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (never signals it: on Windows ``os.kill(pid, 0)`` would stop it)."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopRequest:
    """Set by SIGINT/SIGTERM (in the main thread) or by the caller's cancel event; checked every step."""

    def __init__(self, event: Optional[threading.Event] = None):
        self.event = event or threading.Event()
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.event.is_set()


CHECKPOINT_KEYS = ("iteration", "weights_a", "weights_b", "optimizer_a", "optimizer_b", "rng_numpy", "rng_torch",
                   "rng_generator", "config", "manifest")


def load_checkpoint(folder: str) -> Dict[str, Any]:
    """The newest usable checkpoint of ``folder``: ``checkpoint.pt``, or ``checkpoint.prev.pt`` when the newest
    is missing, truncated or incomplete (a machine that died mid-write, a full disk).

    The returned dict carries ``"_path"`` (the file used) and ``"_skipped"`` (why newer ones were not).
    """
    problems = []
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        try:
            data = load_trusted_data(path, "checkpoint")
        except InputError:
            problems.append(f"{path} is truncated or damaged")
            continue
        missing = [k for k in CHECKPOINT_KEYS if k not in data]
        if data.get("format") != CHECKPOINT_FORMAT or missing:
            problems.append(f"{path} is not a complete SemiSupSeg checkpoint")
            continue
        data["_path"], data["_skipped"] = path, problems
        return data
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise InputError(f"The folder {folder} has no usable checkpoint to resume from{detail}; start a new "
                     f"training instead.")


def write_checkpoint(folder: str, payload: Dict[str, Any]) -> str:
    """Writes ``checkpoint.pt`` so that one complete checkpoint exists at every moment.

    The new checkpoint goes to a temporary file first (flushed to disk); only then does the current one
    become ``checkpoint.prev.pt`` and the new one take its name (both renames are atomic). A kill, a
    power cut or a second Ctrl+C at any point leaves the old checkpoint, the new one, or both.
    """
    path = os.path.join(folder, CHECKPOINT_NAME)
    tmp = save_temporary(payload, path)
    try:
        if os.path.exists(path):
            os.replace(path, os.path.join(folder, PREVIOUS_CHECKPOINT_NAME))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _remove_partial_files(folder: str) -> None:
    """Temporary files of a training that was killed mid-write (we hold the folder's lock)."""
    for name in os.listdir(folder):
        if PARTIAL_MARK in name and (name.startswith(("checkpoint", "model", CONFIG_NAME, LOG_NAME))):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}{PARTIAL_MARK}{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _trim_log(path: str, iteration: int) -> None:
    """On resume: drops the log's events after the checkpoint's iteration (they are run again)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(event, dict) and int(event.get("iteration") or 0) <= iteration:
                kept.append(json.dumps(event) + "\n")
    _write_text_atomic(path, "".join(kept))


# ------------------------------------------------------------------------------------------ public API

def model_metadata(config: TrainConfig, manifest: Manifest, labeled: list, unlabeled: list, iteration: int,
                   device: torch.device) -> Dict[str, Any]:
    classes = [dict(c.to_dict(), color=class_color(manifest.classes, i) if i else [0.0, 0.0, 0.0])
               for i, c in enumerate(manifest.classes)]
    preset_defaults = preset_config(config.preset).to_dict() if config.preset else {}
    overrides = {k: v for k, v in config.to_dict().items() if preset_defaults.get(k) != v}
    spacings = np.array([c.geometry.spacing for c in labeled + unlabeled])  # the grids the networks saw
    return {
        "classes": classes,
        "modality": manifest.modality,
        "normalization": {"method": normalization_for(manifest.modality, config.normalization),
                          "ct_window": list(config.ct_window)},
        "patch_size": list(config.patch_size),
        "spacing": [float(s) for s in np.median(spacings, axis=0)],
        "geometry": geometry.training_spacing(config.target_spacing, _image_paths(manifest))[1],
        "preset": config.preset,
        "overrides": overrides,
        "config": config.to_dict(),
        "networks": {"a": "VNet", "b": "ResVNet", "base_filters": config.base_filters,
                     "resnet_blocks": list(config.resnet_blocks), "in_channels": 1},
        "training": {"iterations": iteration, "labeled_cases": len(labeled), "unlabeled_cases": len(unlabeled),
                     "device": str(device),
                     "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }


def _image_paths(manifest: Manifest) -> list:
    """The images training reads (their headers decide the target spacing)."""
    return [e.image for e in manifest.labeled_cases + manifest.unlabeled_cases]


def train(manifest_path: Optional[str], output_dir: str, config: Optional[TrainConfig] = None,
          progress: str = "bar", callback: Optional[Callable[[dict], None]] = None,
          init_model: Optional[str] = None, resume: bool = False,
          cancel_event: Optional[threading.Event] = None, log_every: int = 10) -> str:
    """Trains both networks and writes ``output_dir/model.pt``; returns its path.

    ``resume=True`` continues the checkpoint in ``output_dir`` (manifest and settings come from it) with the
    same iteration count, schedules, optimiser and random states: the result equals an uninterrupted run.
    ``init_model`` starts from a model file's weights (retraining after corrections). SIGINT/SIGTERM or
    ``cancel_event`` write a checkpoint and raise :class:`Cancelled`. A folder that this call created is
    removed again when the training fails before writing anything into it.
    """
    output_dir = os.path.abspath(output_dir)
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
    reporter = Reporter(progress, callback)
    try:
        with TrainingLock(output_dir), StopRequest(cancel_event) as stop:
            _remove_partial_files(output_dir)
            checkpoint = load_checkpoint(output_dir) if resume else None
            if checkpoint is not None:
                config = TrainConfig.from_dict(checkpoint["config"])
                manifest = parse_manifest(checkpoint["manifest"], checkpoint["manifest_path"])
            else:
                if manifest_path is None:
                    raise InputError("Give a manifest (--manifest) to train on, or --resume a stopped training.")
                manifest = load_manifest(manifest_path)
                config = config or preset_config("paper")
            config.validate()
            device = select_device(config.device)
            spacing = geometry.training_spacing(config.target_spacing, _image_paths(manifest))[0]
            labeled, unlabeled = load_training_cases(
                manifest, normalization_for(manifest.modality, config.normalization), config.ct_window,
                canonical=True, target_spacing=spacing)
            trainer = Trainer(config, len(manifest.classes), labeled, unlabeled, device)
            note = ""
            log_path = os.path.join(output_dir, LOG_NAME)
            if checkpoint is not None:
                trainer.load_state(checkpoint)
                _trim_log(log_path, trainer.iteration)
                if checkpoint["_skipped"]:
                    note = (f" The newest checkpoint could not be used ({'; '.join(checkpoint['_skipped'])}), so "
                            f"training continues from {checkpoint['_path']}.")
                del checkpoint  # the state now lives in the trainer; free the copy
            else:
                if init_model:
                    _init_from_model(trainer, init_model, manifest)
                if os.path.exists(log_path):
                    os.remove(log_path)  # a new training starts a new log
            _write_text_atomic(os.path.join(output_dir, CONFIG_NAME), json.dumps(config.to_dict(), indent=2))
            return _run(trainer, manifest, labeled, unlabeled, output_dir, reporter, stop, log_every, note)
    except BaseException:
        if created:
            _remove_if_empty(output_dir)
        raise


@contextlib.contextmanager
def _disk_errors(folder: str, what: str):
    """A full disk or a folder that became read-only, in one sentence (the previous checkpoint is kept)."""
    try:
        yield
    except OSError as e:
        raise InputError(f"Cannot write {what} into {folder} ({e.strerror or e}); free disk space or check the "
                         f"folder, then continue with 'semisupseg train --resume {folder}'.") from None


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _init_from_model(trainer: Trainer, path: str, manifest: Manifest) -> None:
    data = load_trusted_data(path)
    meta = data.get("metadata") or {}
    if [c["value"] for c in meta.get("classes", [])] != manifest.class_values:
        raise InputError(f"The model file {path} was trained for other classes than the manifest's; retrain "
                         f"from scratch or use a manifest with the model's classes.")
    try:
        trainer.load_weights(data["weights_a"], data["weights_b"])
    except (KeyError, RuntimeError):
        raise InputError(f"The model file {path} has networks of another size than this preset's; use the "
                         f"preset it was trained with ({meta.get('preset')}).") from None


def _run(trainer: Trainer, manifest: Manifest, labeled: list, unlabeled: list, output_dir: str,
         reporter: Reporter, stop: StopRequest, log_every: int, note: str = "") -> str:
    config = trainer.config
    first = trainer.iteration
    log_path = os.path.join(output_dir, LOG_NAME)
    manifest_data = manifest_to_dict(manifest)

    def checkpoint() -> str:
        payload = dict(trainer.state(), format=CHECKPOINT_FORMAT, config=config.to_dict(),
                       manifest=manifest_data, manifest_path=manifest.path or "")
        with _disk_errors(output_dir, "the checkpoint"):
            path = write_checkpoint(output_dir, payload)
        reporter.emit("checkpoint", "train", iteration=trainer.iteration, path=path)
        return path

    what = f"Resuming at iteration {first} of {config.iterations}" if first else "Training"
    reporter.emit("start", "train", iteration=first, total=config.iterations, device=str(trainer.device),
                  message=f"{what} on {trainer.device} ({len(labeled)} labeled, {len(unlabeled)} unlabeled "
                          f"cases, preset {config.preset}, {config.iterations} iterations).{note}")
    with open(log_path, "a") as log:
        while trainer.iteration < config.iterations:
            if stop.requested:
                path = checkpoint()
                reporter.emit("cancelled", "train", iteration=trainer.iteration, checkpoint=path,
                              message=f"Cancelled at iteration {trainer.iteration}; resume with "
                                      f"'semisupseg train --resume {output_dir}'.")
                raise Cancelled()
            try:
                terms = trainer.step()
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                kept = os.path.exists(os.path.join(output_dir, CHECKPOINT_NAME))
                raise MemoryError(
                    f"The {trainer.device} ran out of memory at iteration {trainer.iteration + 1} (patch size "
                    f"{tuple(config.patch_size)}, batch {config.batch_labeled}+{config.batch_unlabeled}); train "
                    f"again with a smaller preset or patch (e.g. --preset cpu-fast or --set patch_size=[64,64,48]) "
                    f"or on another device{'; the checkpoints in ' + output_dir + ' are kept' if kept else ''}."
                ) from None
            it = trainer.iteration
            if it % log_every == 0 or it == config.iterations or it == first + 1:
                values = {k: round(float(v), 5) for k, v in terms.items()}
                if not np.isfinite(values["loss"]):
                    raise InputError(f"Training diverged at iteration {it} (loss is not finite); lower the "
                                     f"learning rate (--set lr=0.001) or check the images' intensities.")
                stats = {k: values.pop(k) for k in STAT_KEYS if k in values}
                event = reporter.progress("train", it, config.iterations, first, losses=values, stats=stats,
                                          lr=learning_rate(config, it - 1))
                log.write(json.dumps(event) + "\n")
                log.flush()
            else:
                reporter.progress("train", it, config.iterations, first)
            if it % config.checkpoint_every == 0 and it < config.iterations:
                checkpoint()
    with _disk_errors(output_dir, "the model file"):
        model_path = save_model(os.path.join(output_dir, MODEL_NAME), trainer.net_a.state_dict(),
                                trainer.net_b.state_dict(),
                                model_metadata(config, manifest, labeled, unlabeled, trainer.iteration,
                                               trainer.device))
    checkpoint()
    reporter.emit("done", "train", iteration=trainer.iteration, total=config.iterations, model=model_path,
                  message=f"Model file written: {model_path}")
    return model_path

