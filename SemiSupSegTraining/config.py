"""Training settings, presets and their JSON round-trip.

Sizes are given in voxel order x, y, z (as ITK, Slicer and the paper write them: 112×112×80);
arrays inside the engine are z, y, x, and :func:`zyx` converts.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .errors import InputError
from .methods import METHODS, REGISTRY  # noqa: F401  (METHODS: the names, for the module and tests)

#: The one default method: the command line, the Python API, the presets that do not name another and the
#: Slicer module all read it from here. Chosen by Testing/Benchmarks/choose_default.py's rule on the fair
#: tables (docs/benchmarks.md): no semi-supervised method reached labels alone on the Colin27 pseudo-subjects.
DEFAULT_METHOD = "supervised"
#: The one default preset (``semisupseg train`` without ``--preset``, ``api.train`` without a config, the module).
DEFAULT_PRESET = "cpu-fast"

#: ``amp`` settings: ``auto`` (by the device, :func:`precision_for`), or one precision for every device.
AMP_CHOICES = ("auto", "bf16", "fp16", "fp32")


def amp_choice(setting: Any) -> str:
    """The ``amp`` setting as one of :data:`AMP_CHOICES`; ``True``/``False`` (older settings files, the Python
    API) mean ``auto``/``fp32``. Raises :class:`InputError` for anything else."""
    if setting is True or setting is False:
        return "auto" if setting else "fp32"
    if setting not in AMP_CHOICES:
        raise InputError(f"amp is {setting!r}; use one of {', '.join(AMP_CHOICES)} (auto: bf16 on GPUs of compute "
                         f"capability 8.0 or newer, fp16 on 7.x, fp32 elsewhere).")
    return setting


@dataclass
class TrainConfig:
    preset: str = "paper"
    # Data
    patch_size: Tuple[int, int, int] = (112, 112, 80)     # x, y, z; each divisible by 16
    batch_labeled: int = 2
    batch_unlabeled: int = 2
    foreground_fraction: float = 0.5     # share of labeled crops centred on a foreground voxel
    augment: bool = True                 # random flips and 90° rotations in the axial plane
    normalization: Optional[str] = None  # None: from the manifest's modality ("zscore" MRI, "window" CT)
    ct_window: Tuple[float, float] = (-120.0, 240.0)
    # The spacing the networks see (every scan is also brought to one orientation, geometry.py): "auto" (the
    # training set's, by nnU-Net's rule), "native" (each scan's own grid) or [x, y, z] in mm.
    target_spacing: Any = "auto"
    # Networks
    base_filters: int = 16
    resnet_blocks: Tuple[int, int, int, int] = (3, 4, 6, 3)
    dropout: float = 0.5
    # Optimiser and schedule (paper Sec. 3.1)
    iterations: int = 6000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 2500
    lr_gamma: float = 0.1
    # "ours": the paper's method with gradient through every term; "supervised": labeled crops only;
    # "reference": what the released reference code trains (supervised + its labeled-data correction);
    # the baselines "mean-teacher", "ua-mt", "cps", "bcp". Every preset names its method (PRESETS).
    method: str = DEFAULT_METHOD
    # Semi-supervised terms (paper Eq. 2-7; defaults where the paper is silent: ../shared/REFERENCE.md)
    use_unsupervised: bool = True        # L_u
    use_regularization: bool = True      # L_reg
    use_contrastive: bool = True         # L_c
    lambda_u: float = 1.0
    # λu reaches its value through a sigmoid ramp-up over this share of training; 0 = constant from the first
    # iteration, as printed. Early pseudo labels are all background: constant λu held the networks there.
    lambda_u_rampup: float = 0.4
    lambda_c_max: float = 0.1
    lambda_c_schedule: str = "rampup"    # "rampup" (default) or "printed" (the paper's formula as printed)
    reliable_fraction: float = 0.8       # share of unlabeled voxels kept by the entropy filter
    # "class": the entropy percentile per pseudo class; "batch": one percentile over the batch, which drops
    # every voxel of an organ smaller than the unreliable share (L_u then never sees foreground).
    reliability: str = "class"
    # Where the paper is silent (issue 14; defaults = the paper's reading). "lower-loss": the pseudo label is
    # the argmax of the network with the lower L_s; "ensemble": of both networks' averaged softmax; "cross":
    # each network learns the other's argmax, filtered by the other's entropy (no network learns its own).
    pseudo_label: str = "lower-loss"
    reliable_confidence: float = 0.0     # > 0: a reliable voxel also needs a top probability at least this high
    # The unreliable voxels L_c pulls to their pseudo class: "unreliable" (all of them, Eq. 7), "agreed"
    # (only those where both networks' argmax agree: elsewhere the pseudo class is a coin toss) or "negatives"
    # (none: each is pushed only from the prototypes of the classes it most surely is not, as U2PL uses them;
    # with two classes there are none, so L_c keeps only its prototype push).
    contrastive_pull: str = "unreliable"
    # Issue 21: the share of the budget that trains on the labeled terms only (λu = λc = 0) before λu and λc
    # ramp up as usual over the rest (the pseudo labels of an untrained network are poor). 0: from the start.
    unlabeled_start: float = 0.0
    regularization_average: str = "voxels"  # L_reg averaged over all voxels, or "mdiff": over M_diff only
    threshold_start: float = 0.7         # T of Eq. 4, linear from start to end over training
    threshold_end: float = 0.95
    contrastive_temperature: float = 0.1
    contrastive_max_voxels: int = 4096
    prototype_margin: float = 1.0
    prototypes_from_labeled: bool = True
    # Each network sees its own intensity view of the unlabeled crops (every semi-supervised method: ours and
    # CPS each network, Mean Teacher / UA-MT / BCP the student and the teacher).
    unlabeled_views: bool = True
    projection_channels: int = 16        # L_c on a projection head of this width; 0: on the decoder features
    # The baselines (methods/); defaults are their authors' code (yulequan/UA-MT, DeepMed-Lab-ECNU/BCP).
    consistency_weight: float = 0.1      # mean-teacher, ua-mt: weight of the softmax MSE (UA-MT's code)
    # mean-teacher, ua-mt: the weight ramps up over this share of training in 40 steps (UA-MT's code:
    # sigmoid_rampup(iteration // 150, 40) over its 6000 iterations, i.e. the whole run).
    consistency_rampup: float = 1.0
    mt_supervised_weight: float = 0.5    # mean-teacher, ua-mt: the student's loss is this × (CE + Dice)
    ema_decay: float = 0.99              # the teacher's EMA decay while the weight ramps up (bcp: throughout)...
    ema_decay_after: float = 0.99        # ... and after (UA-MT's code: 0.99 throughout)
    teacher_segments: bool = False       # mean-teacher, ua-mt: the teacher, not the student, segments
    input_noise: float = 0.1             # std of the Gaussian noise on the teacher's input (clipped at ±2 std)
    mc_samples: int = 8                  # ua-mt: Monte-Carlo dropout passes of the teacher
    cps_weight: float = 1.5              # cps: weight λ of the cross pseudo supervision (CPS paper), ramped
                                         # up over the share lambda_u_rampup of training
    bcp_pretrain: float = 2.0 / 17.0     # bcp: share of the iterations spent on labeled copy-paste (2000/17000)
    bcp_box: float = 2.0 / 3.0           # bcp: the pasted box's share of each axis of the crop
    bcp_pseudo_weight: float = 0.5       # bcp: weight of the pseudo-labelled region of each mixed crop
    # The safety net (--validate K): the last K labeled cases of the manifest are kept out of training and
    # segmented by the trained model; their Dice goes to validation.json and the model file. 0: off.
    validate_cases: int = 0
    # Running
    seed: int = 0
    device: str = "auto"
    # Mixed precision: "auto" (bf16 on GPUs of compute capability 8.0 or newer, fp16 with loss scaling on 7.x,
    # fp32 on older GPUs and for CPU training: devices.precision_for), "bf16", "fp16" or "fp32".
    amp: Any = "auto"
    # Back-propagate one network at a time (method "ours"): about half the peak memory for one more forward
    # pass of Subnet A without gradient; the gradients are those of the joint loss (Trainer.step). "auto":
    # sequential on CPUs and MPS; on CUDA the joint backward where the card has the memory for it (measured
    # on the first step, gpu.joint_backward_fits).
    sequential_backward: Any = "auto"
    # CUDA only (neither changes a CPU result): cuDNN's autotuner for the fixed crop shape, and the next batch
    # drawn into pinned memory on a background thread ("auto": on CUDA; true: on every device).
    cudnn_benchmark: bool = True
    prefetch: Any = "auto"
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0     # and at least this often (wall clock; 0: by iterations only)
    # Several processes (torchrun): batch norm over the global batch (torch has it on GPUs only; per process
    # on CPUs). The default: a step then equals one step of the global batch, and 2 + 2 crops per GPU give
    # noisy statistics (docs/distributed.md).
    sync_batchnorm: bool = True
    num_workers: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"Unknown training setting(s) {', '.join(unknown)}; "
                             f"the settings are: {', '.join(sorted(known))}.")
        values = {}
        for name, value in data.items():
            default = getattr(cls(), name)
            values[name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if len(self.patch_size) != 3 or any(int(s) % 16 or int(s) < 16 for s in self.patch_size):
            raise InputError(f"Patch size {tuple(self.patch_size)} is not three sizes divisible by 16; "
                             f"use e.g. 112 112 80.")
        if self.iterations < 1 or self.batch_labeled < 1 or self.batch_unlabeled < 0:
            raise InputError("Iterations and the labeled batch size must be at least 1.")
        bottleneck = 1
        for size in self.patch_size:
            bottleneck *= int(size) // 16
        if bottleneck * self.batch_labeled < 2:
            # Batch normalisation needs two values per channel at the 1/16-resolution bottleneck.
            raise InputError(f"Patch size {tuple(self.patch_size)} with {self.batch_labeled} labeled crop(s) "
                             f"leaves a single voxel at the networks' bottleneck; use a larger patch "
                             f"(e.g. 32 32 16) or batch_labeled=2.")
        if self.method not in REGISTRY:
            raise InputError(f"method is {self.method!r}; use one of {', '.join(REGISTRY)}.")
        if self.regularization_average not in ("voxels", "mdiff"):
            raise InputError(f"regularization_average is {self.regularization_average!r}; use 'voxels' or "
                             f"'mdiff'.")
        if self.reliability not in ("batch", "class"):
            raise InputError(f"reliability is {self.reliability!r}; use 'batch' or 'class'.")
        if self.pseudo_label not in ("lower-loss", "ensemble", "cross"):
            raise InputError(f"pseudo_label is {self.pseudo_label!r}; use 'lower-loss', 'ensemble' or 'cross'.")
        if self.contrastive_pull not in ("unreliable", "agreed", "negatives"):
            raise InputError(f"contrastive_pull is {self.contrastive_pull!r}; use 'unreliable', 'agreed' or "
                             f"'negatives'.")
        if not 0.0 <= self.unlabeled_start < 1.0:
            raise InputError(f"unlabeled_start is {self.unlabeled_start!r}; use a share of the iterations in [0, 1), "
                             f"e.g. 0.25.")
        if not 0.0 <= self.reliable_confidence <= 1.0:
            raise InputError("reliable_confidence must lie between 0 and 1 (0 switches it off).")
        if self.lambda_c_schedule not in ("rampup", "printed"):
            raise InputError(f"lambda_c_schedule is {self.lambda_c_schedule!r}; use 'rampup' or 'printed'.")
        if self.normalization not in (None, "zscore", "window"):
            raise InputError(f"normalization is {self.normalization!r}; use 'zscore' or 'window'.")
        if not (isinstance(self.projection_channels, int) and self.projection_channels >= 0):
            raise InputError(f"projection_channels is {self.projection_channels!r}; use 0 or a positive whole number.")
        if not (isinstance(self.validate_cases, int) and not isinstance(self.validate_cases, bool)
                and self.validate_cases >= 0):
            raise InputError(f"validate_cases is {self.validate_cases!r}; use 0 (off) or the number of labeled "
                             f"cases to hold out, e.g. 2.")
        if self.checkpoint_every < 1 or self.checkpoint_minutes < 0:
            raise InputError("checkpoint_every must be at least 1 and checkpoint_minutes at least 0.")
        if not 0.0 <= self.reliable_fraction <= 1.0:
            raise InputError("reliable_fraction must lie between 0 and 1.")
        if not (0.0 <= self.ema_decay < 1.0 and 0.0 <= self.ema_decay_after < 1.0):
            raise InputError("ema_decay and ema_decay_after must lie in [0, 1), e.g. 0.99 (UA-MT's code).")
        if not (isinstance(self.mc_samples, int) and self.mc_samples >= 2):
            raise InputError(f"mc_samples is {self.mc_samples!r}; use a whole number of at least 2, e.g. 8.")
        if self.input_noise < 0 or self.consistency_weight < 0 or self.cps_weight < 0 or self.mt_supervised_weight < 0:
            raise InputError("input_noise, consistency_weight, mt_supervised_weight and cps_weight must not be "
                             "negative.")
        if not 0.0 <= self.consistency_rampup <= 1.0:
            raise InputError("consistency_rampup is a share of training: use a value between 0 and 1, e.g. 1.")
        if not (0.0 <= self.bcp_pretrain < 1.0 and 0.0 < self.bcp_box < 1.0 and self.bcp_pseudo_weight >= 0):
            raise InputError("bcp_pretrain must lie in [0, 1), bcp_box in (0, 1) and bcp_pseudo_weight be at least "
                             "0 (BCP's code: 2/17, 2/3, 0.5).")
        from .methods import method_class

        method_class(self.method).check(self)
        self.amp = amp_choice(self.amp)
        for name in ("sequential_backward", "prefetch"):
            if getattr(self, name) not in (True, False, "auto"):
                raise InputError(f"{name} is {getattr(self, name)!r}; use true, false or auto.")
        from .geometry import parse_target_spacing

        parsed = parse_target_spacing(self.target_spacing)  # "0.7,0.7,2" from --set becomes [0.7, 0.7, 2.0]
        self.target_spacing = parsed if isinstance(parsed, str) else list(parsed)


# Inference (sliding windows). Chosen by Testing/Benchmarks/bench_inference.py with a trained model: the
# fastest tiling whose labels agree with the reference's dense procedure at Dice >= 0.99 (0.9924; overlap 0.5
# with 4 windows a pass: 0.9926, 1.5× slower, 800 MiB more).
DEFAULT_OVERLAP = 0.25
DEFAULT_WINDOW_BATCH = 2
# On a CUDA GPU: four 112×112×80 windows of both paper networks take well under 2 GB in bf16 (an estimate:
# no GPU has run it yet, docs/performance.md).
CUDA_WINDOW_BATCH = 4
# The paper's pancreas inference: 96³ windows every 16 voxels (MONAI's step int(96 × (1 − 0.83)) = 16).
PANCREAS_OVERLAP = 0.83

PRESETS: Dict[str, Dict[str, Any]] = {
    # The paper's networks, crops and schedule (a GPU job).
    "paper": {"method": "ours"},
    # A laptop CPU: 64×64×48 crops, 8 base filters (~15× cheaper per step than the paper's).
    "cpu-fast": {"method": DEFAULT_METHOD, "patch_size": (64, 64, 48), "base_filters": 8, "iterations": 1500, "lr_step": 600,
                 "checkpoint_every": 100},
    # The built-in demo on synthetic phantoms: minutes on two CPU cores.
    "demo": {"method": "ours", "patch_size": (48, 48, 32), "base_filters": 8, "resnet_blocks": (1, 1, 1, 1),
             "iterations": 300, "lr_step": 200, "lr": 0.03, "checkpoint_every": 100},
    # The paper's pancreas protocol: 96×96×96 crops (segment with --overlap 0.83: windows every 16 voxels,
    # PANCREAS_OVERLAP).
    "pancreas": {"method": "ours", "patch_size": (96, 96, 96)},
    # Seconds: for tests and the Slicer self-test; it trains the paper's method, the engine's longest path.
    "tiny": {"method": "ours", "patch_size": (32, 32, 16), "base_filters": 4, "resnet_blocks": (1, 1, 1, 1),
             "iterations": 4, "batch_labeled": 1, "batch_unlabeled": 1, "lr_step": 1000,
             "checkpoint_every": 2, "contrastive_max_voxels": 256},
}


def preset_config(name: str, overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """The preset's settings with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise InputError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    data = dict(PRESETS[name])
    data["preset"] = name
    data.update(overrides or {})
    return TrainConfig.from_dict(data)


def preset_method(name: str) -> str:
    """The method preset ``name`` trains unless ``--set method=`` overrides it."""
    if name not in PRESETS:
        raise InputError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name].get("method", DEFAULT_METHOD)


def parse_override(text: str) -> Tuple[str, Any]:
    """``key=value`` from the command line; the value is parsed as JSON when it can be (numbers, lists)."""
    import json

    if "=" not in text:
        raise InputError(f"Setting {text!r} is not of the form key=value, e.g. lr=0.005.")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def zyx(size_xyz: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """x, y, z sizes → array order z, y, x."""
    return (int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0]))


def list_presets() -> List[str]:
    return list(PRESETS)


#: The settings of how a training runs, not of what it learns: ``train --resume`` may change them.
RUN_SETTINGS = ("device", "amp", "sequential_backward", "cudnn_benchmark", "prefetch", "checkpoint_every",
                "checkpoint_minutes")


def with_run_settings(config: TrainConfig, overrides: Optional[Dict[str, Any]]) -> TrainConfig:
    """``config`` with ``overrides`` of :data:`RUN_SETTINGS` applied (on resume); others are an error."""
    if not overrides:
        return config
    other = sorted(set(overrides) - set(RUN_SETTINGS))
    if other:
        raise InputError(f"A resumed training keeps its settings; {', '.join(other)} cannot change on --resume "
                         f"(only {', '.join(RUN_SETTINGS)} can); start a new training to change them.")
    return TrainConfig.from_dict(dict(config.to_dict(), **overrides))
