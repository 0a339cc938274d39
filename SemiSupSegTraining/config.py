"""Training settings, presets and their JSON round-trip.

Sizes are given in voxel order x, y, z (as ITK, Slicer and the paper write them: 112×112×80);
arrays inside the engine are z, y, x, and :func:`zyx` converts.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Tuple, Union, get_args, get_origin, get_type_hints

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
    """Every setting of a training (``--set name=value``, a preset, the Python API); docs/settings.md lists
    them, generated from this class (``python -m SemiSupSegTraining.config --markdown docs/settings.md``).

    A field's documentation is the string below it; a ``# ==`` comment starts a group. Choices are
    ``Literal`` types, checked with the ranges in :meth:`validate`.
    """

    preset: str = ""
    """The preset these settings started from (``semisupseg info`` shows its name; empty: none, the defaults below)."""
    method: str = DEFAULT_METHOD
    """What trains: one of ``methods.REGISTRY`` (``ours``, ``supervised``, ``reference``, ``mean-teacher``,
    ``ua-mt``, ``cps``, ``bcp``; docs/method.md). Every preset names its method."""

    # == Data
    patch_size: Tuple[int, int, int] = (112, 112, 80)
    """The training crop, x, y, z in voxels; each divisible by 16."""
    batch_labeled: int = 2
    """Labeled crops per iteration (per process under torchrun)."""
    batch_unlabeled: int = 2
    """Unlabeled crops per iteration, after the labeled ones (methods that learn from unlabeled cases)."""
    foreground_fraction: float = 0.5
    """Share of the labeled crops centred on a foreground voxel; the rest are uniform."""
    augmentation: Optional[Literal["paper", "strong", "none"]] = None
    """The crops' augmentation (augment.py; docs/method.md): ``paper`` (a random flip per axis and 90° turns in
    the axial plane, the paper's code), ``strong`` (nnU-Net v2's: rotation, scaling, noise, blur, brightness,
    contrast, low resolution, gamma, flips) or ``none``. None: the method's own level, chosen by the rule of
    docs/benchmarks.md (``strong`` for supervised, ``paper`` for every other method)."""
    augment_unlabeled: bool = True
    """The unlabeled crops get the same level; false: at most the paper's flips and turns (only the labeled
    crops change)."""
    normalization: Optional[Literal["zscore", "window"]] = None
    """Intensity normalisation; None: from the manifest's modality (``zscore`` for MRI, ``window`` for CT)."""
    ct_window: Tuple[float, float] = (-120.0, 240.0)
    """The CT window in HU (``normalization=window``)."""
    target_spacing: Any = "auto"
    """The spacing the networks see (every scan is also brought to one orientation): ``auto`` (the training
    set's, by nnU-Net's rule), ``native`` (each scan's own grid) or [x, y, z] in mm."""
    unlabeled_views: bool = True
    """Each network sees its own intensity view of the unlabeled crops (contrast, shift, bias field, noise):
    every method that learns from unlabeled crops (ours and CPS each network, Mean Teacher / UA-MT / BCP the
    student and the teacher). False: both see the same crops."""

    # == Networks
    base_filters: int = 16
    """Channels of the networks' first level (doubling per level); 16 is the paper's."""
    resnet_blocks: Tuple[int, int, int, int] = (3, 4, 6, 3)
    """Basic blocks per stage of Subnet B's ResNet34-style encoder."""
    dropout: float = 0.5
    """Dropout3d probability at the bottleneck of every network (training only)."""
    decoder_dropout: Optional[bool] = None
    """Dropout3d also on the last decoder features before the classifier, as UA-MT's and BCP's V-Net
    (``has_dropout``). None: as the method's authors' network has it (on for mean-teacher, ua-mt and bcp;
    off for ours, supervised, reference and cps)."""

    # == Optimiser and schedule (paper Sec. 3.1)
    iterations: int = 6000
    """Training iterations."""
    lr: float = 0.01
    """SGD's learning rate at the start."""
    momentum: float = 0.9
    """SGD's momentum."""
    weight_decay: float = 1e-4
    """SGD's weight decay."""
    lr_step: int = 2500
    """The learning rate is multiplied by ``lr_gamma`` every ``lr_step`` iterations."""
    lr_gamma: float = 0.1
    """The learning rate's factor at every step."""

    # == ours: the paper's terms (Eq. 2-7)
    use_unsupervised: bool = True
    """L_u: cross-entropy against the filtered pseudo label on the unlabeled crops."""
    use_regularization: bool = True
    """L_reg: the disagreement term of Eq. 4."""
    use_contrastive: bool = True
    """L_c: the prototype contrastive loss of Eq. 6-7."""
    lambda_u: float = 1.0
    """λu of Eq. 3."""
    lambda_u_rampup: float = 0.4
    """λu reaches its value through a sigmoid ramp-up over this share of training; 0: constant from the first
    iteration, as printed (early pseudo labels are all background: constant λu held the networks there)."""
    lambda_c_max: float = 0.1
    """λc's final value."""
    lambda_c_schedule: Literal["rampup", "printed"] = "rampup"
    """``rampup``: λc = λc_max·exp(−5(1 − t/T)²); ``printed``: the paper's formula as printed."""
    unlabeled_start: float = 0.0
    """The share of the budget that trains on the labeled terms only (λu = λc = 0) before λu and λc ramp up
    over the rest; 0: from the start."""
    reliable_fraction: float = 0.8
    """Share of the unlabeled voxels the entropy filter keeps as reliable."""
    reliability: Literal["class", "batch"] = "class"
    """``class``: the entropy percentile per pseudo class; ``batch``: one percentile over the batch (which
    drops every voxel of an organ smaller than the unreliable share)."""
    pseudo_label: Literal["lower-loss", "ensemble", "cross"] = "lower-loss"
    """Where the pseudo label comes from: ``lower-loss``: the network with the lower L_s (the paper);
    ``ensemble``: both networks' averaged softmax; ``cross``: each network learns the other's argmax."""
    reliable_confidence: float = 0.0
    """> 0: a reliable voxel also needs a top probability at least this high."""
    contrastive_pull: Literal["unreliable", "agreed", "negatives"] = "unreliable"
    """The unreliable voxels L_c pulls to their pseudo class: ``unreliable`` (all, Eq. 7), ``agreed`` (only
    where both networks' argmax agree) or ``negatives`` (none: each is pushed from the prototypes of the
    classes it most surely is not, as U2PL)."""
    regularization_average: Literal["voxels", "mdiff"] = "voxels"
    """L_reg averaged over all voxels, or over M_diff only."""
    threshold_start: float = 0.7
    """T of Eq. 4 at the start, linear to ``threshold_end`` over training."""
    threshold_end: float = 0.95
    """T of Eq. 4 at the end."""
    contrastive_temperature: float = 0.1
    """τ of L_c (Eq. 7)."""
    contrastive_max_voxels: int = 4096
    """Voxels L_c samples per iteration (bounds its memory)."""
    prototype_margin: float = 1.0
    """L_c pushes class prototypes apart until their squared distance reaches this margin (at most 4)."""
    prototypes_from_labeled: bool = True
    """Class prototypes also from the labeled crops' ground truth."""
    projection_channels: int = 16
    """L_c on a projection head of this width; 0: on the decoder features."""

    # == Mean Teacher and UA-MT (defaults: yulequan/UA-MT's code)
    consistency_weight: float = 0.1
    """Weight of the softmax MSE between student and teacher."""
    consistency_rampup: float = 1.0
    """The weight ramps up over this share of training in 40 steps (UA-MT: ``sigmoid_rampup(iteration // 150,
    40)`` over its 6000 iterations, the whole run)."""
    mt_supervised_weight: float = 0.5
    """The student's supervised loss is this × (CE + Dice)."""
    ema_decay: float = 0.99
    """The teacher's EMA decay while the weight ramps up (bcp: throughout)."""
    ema_decay_after: float = 0.99
    """... and after the ramp-up (UA-MT: 0.99 throughout)."""
    teacher_segments: bool = False
    """The teacher, not the student, segments."""
    input_noise: float = 0.1
    """Std of the Gaussian noise on the teacher's input (clipped at ±2 std)."""
    mc_samples: int = 8
    """ua-mt: Monte-Carlo dropout passes of the teacher."""

    # == CPS (defaults: charlesCXK/TorchSemiSeg's code)
    cps_weight: float = 1.5
    """Weight λ of the cross pseudo supervision."""
    cps_rampup: float = 0.0
    """λ ramps up (sigmoid) over this share of training; 0: constant, as CPS's code."""
    cps_supervision: Literal["ce", "ce+dice"] = "ce"
    """Each network's supervised loss: ``ce`` (CPS's code) or ``ce+dice`` (L_s, as ours)."""
    cps_segments: Literal["a", "both"] = "a"
    """Which network segments: ``a`` (CPS's code tests its first branch) or ``both`` (softmax averaged)."""

    # == BCP (defaults: DeepMed-Lab-ECNU/BCP's code)
    bcp_pretrain_iterations: int = 2000
    """Pre-training on labeled copy-paste: BCP's 2000 iterations, but at most half the budget (so that the
    teacher starts from a network trained as long as the budget allows); 0: by ``bcp_pretrain`` alone."""
    bcp_pretrain: float = 2.0 / 17.0
    """The least share of the iterations spent on pre-training (BCP: 2000 of its 17000)."""
    bcp_box: float = 2.0 / 3.0
    """The pasted box's share of each axis of the crop."""
    bcp_pseudo_weight: float = 0.5
    """Weight of the pseudo-labelled region of each mixed crop."""
    bcp_largest_component: bool = True
    """The teacher's pseudo label keeps each foreground class's largest connected component only."""

    # == Validation
    validate_cases: int = 0
    """The safety net (``--validate K``): the last K labeled cases of the manifest are kept out of training
    and segmented by the trained model; their Dice goes to validation.json and the model file. 0: off."""

    # == Running (RUN_SETTINGS may change on --resume)
    seed: int = 0
    """The seed of the networks' initial weights, the crops, dropout and every method's draws."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    amp: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Mixed precision: ``auto`` (bf16 on GPUs of compute capability 8.0 or newer, fp16 with loss scaling on
    7.x, fp32 on older GPUs and for CPU training) or one precision (true/false mean auto/fp32)."""
    sequential_backward: Union[bool, Literal["auto"]] = "auto"
    """ours: back-propagate one network at a time, about half the peak memory for one more forward pass of
    Subnet A without gradient (the gradients are the joint loss's). ``auto``: sequential on CPUs and MPS; on
    CUDA the joint backward where the card has the memory for it (measured on the first step)."""
    cudnn_benchmark: bool = True
    """CUDA only: cuDNN's autotuner for the fixed crop shape."""
    prefetch: Union[bool, Literal["auto"]] = "auto"
    """The next batch drawn into pinned memory on a background thread (``auto``: on CUDA, and on CPUs with the
    strong augmentation, whose resampling then overlaps the step)."""
    checkpoint_every: int = 500
    """A checkpoint every this many iterations ..."""
    checkpoint_minutes: float = 10.0
    """... and at least this often (wall clock; 0: by iterations only)."""
    sync_batchnorm: bool = True
    """Several processes (torchrun): batch norm over the global batch (torch has it on GPUs only)."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        if "augment" in data:  # earlier versions' switch: true was today's paper level
            data = dict(data)
            data.setdefault("augmentation", "paper" if data.pop("augment") else "none")
        data = {k: v for k, v in data.items() if k not in REMOVED_SETTINGS}  # older run folders and model files
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
        """Raises :class:`InputError` (one sentence) for a setting out of its choices or range."""
        self.amp = amp_choice(self.amp)
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if not any(type(value) is type(c) and value == c for c in choices):
                raise InputError(f"{name} is {value!r}; use one of {', '.join(_shown(c) for c in choices)}.")
        for names, (low, high, hint) in _RANGES.items():
            for name in names.split():
                value = getattr(self, name)
                number = (int,) if name in _WHOLE else (int, float)
                if isinstance(value, bool) or not isinstance(value, number) or not _within(value, low, high):
                    raise InputError(f"{name} is {value!r}; use {hint}.")
        self._check_shapes()
        if self.method not in REGISTRY:
            raise InputError(f"method is {self.method!r}; use one of {', '.join(REGISTRY)}.")
        from .methods import method_class

        method_class(self.method).check(self)
        if self.augmentation is None:  # the method's own level, so that run folders and model files record it
            self.augmentation = method_class(self.method).augmentation
        from .geometry import parse_target_spacing

        parsed = parse_target_spacing(self.target_spacing)  # "0.7,0.7,2" from --set becomes [0.7, 0.7, 2.0]
        self.target_spacing = parsed if isinstance(parsed, str) else list(parsed)

    def _check_shapes(self) -> None:
        if len(self.patch_size) != 3 or any(int(s) % 16 or int(s) < 16 for s in self.patch_size):
            raise InputError(f"Patch size {tuple(self.patch_size)} is not three sizes divisible by 16; "
                             f"use e.g. 112 112 80.")
        bottleneck = 1
        for size in self.patch_size:
            bottleneck *= int(size) // 16
        if bottleneck * self.batch_labeled < 2:
            # Batch normalisation needs two values per channel at the 1/16-resolution bottleneck.
            raise InputError(f"Patch size {tuple(self.patch_size)} with {self.batch_labeled} labeled crop(s) "
                             f"leaves a single voxel at the networks' bottleneck; use a larger patch "
                             f"(e.g. 32 32 16) or batch_labeled=2.")


#: Settings of earlier versions that no longer exist (read nowhere); older run folders still name them.
REMOVED_SETTINGS = ("num_workers", "extra")



def _choices(annotation: Any) -> Tuple[Any, ...]:
    """The values a ``Literal``-typed setting may take (with true/false and null where its type admits them);
    () for a setting of another type."""
    args = [annotation] if get_origin(annotation) is Literal else list(get_args(annotation))
    if not any(get_origin(a) is Literal for a in args):
        return ()
    values: List[Any] = []
    for a in args:
        values += list(get_args(a)) if get_origin(a) is Literal else {bool: [True, False], type(None): [None]}.get(a, [])
    return tuple(values)


#: Every Literal-typed setting's choices, from the class's annotations: the one place choices are written.
CHOICES: Dict[str, Tuple[Any, ...]] = {name: values for name, values in (
    (f.name, _choices(get_type_hints(TrainConfig)[f.name])) for f in dataclasses.fields(TrainConfig)) if values}

#: "names": (lowest, highest, what to use); a bound in a list is exclusive, None is open.
_RANGES: Dict[str, Tuple[Any, Any, str]] = {
    "iterations batch_labeled checkpoint_every": (1, None, "a whole number of at least 1"),
    "batch_unlabeled contrastive_max_voxels projection_channels validate_cases bcp_pretrain_iterations":
        (0, None, "0 or a positive whole number"),
    "mc_samples": (2, None, "a whole number of at least 2, e.g. 8 (UA-MT's code)"),
    "reliable_fraction reliable_confidence foreground_fraction consistency_rampup cps_rampup dropout":
        (0.0, 1.0, "a value between 0 and 1"),
    "unlabeled_start bcp_pretrain ema_decay ema_decay_after": (0.0, [1.0], "a value in [0, 1), e.g. 0.99 for "
                                                                            "a decay, 0.25 for a share"),
    "bcp_box": ([0.0], [1.0], "a share of each axis in (0, 1), e.g. 2/3 (BCP's code)"),
    "input_noise consistency_weight mt_supervised_weight cps_weight bcp_pseudo_weight lambda_u lambda_c_max "
    "checkpoint_minutes": (0.0, None, "a value of at least 0"),
}
_WHOLE = {"iterations", "batch_labeled", "checkpoint_every", "batch_unlabeled", "contrastive_max_voxels",
          "projection_channels", "validate_cases", "bcp_pretrain_iterations", "mc_samples"}


def _within(value: float, low: Any, high: Any) -> bool:
    above = low is None or (value > low[0] if isinstance(low, list) else value >= low)
    below = high is None or (value < high[0] if isinstance(high, list) else value <= high)
    return above and below


def _shown(choice: Any) -> str:
    """A choice as it is written on the command line (``--set name=value``)."""
    return "null" if choice is None else str(choice).lower() if isinstance(choice, bool) else str(choice)


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
    # The paper as printed (docs/reproduce-paper.md): its plainest reading where it is silent, λc as printed.
    "paper-as-printed": {"method": "ours", "unlabeled_views": False, "reliability": "batch", "lambda_u_rampup": 0.0,
                         "projection_channels": 0, "lambda_c_schedule": "printed"},
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


def settings_markdown() -> str:
    """docs/settings.md: every setting of :class:`TrainConfig` by group, with its default, choices and the
    documentation below it in the class (read from this file's source, so the page cannot drift)."""
    import ast
    import inspect
    import json

    source = inspect.getsource(TrainConfig)
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split()).replace("``", "`")
    groups, lines = {}, source.splitlines()
    group = "What trains"
    for node in body:
        if isinstance(node, ast.AnnAssign):
            marks = [ln.strip()[4:].strip() for ln in lines[:node.lineno - 1] if ln.strip().startswith("# == ")]
            group = marks[-1] if marks else group
            groups.setdefault(group, []).append(node.target.id)
    defaults = TrainConfig().to_dict()
    out = ["# Settings", "",
           "Every training setting, as `semisupseg train --set name=value` (a JSON value: numbers, lists, true, "
           "null), a preset, or the Python API's `TrainConfig` take it. Generated from `SemiSupSegTraining/config.py` "
           "by `python -m SemiSupSegTraining.config --markdown docs/settings.md`; do not edit by hand. "
           "`semisupseg info --preset NAME` shows a preset's values; the presets:", ""]
    for name, values in PRESETS.items():
        out.append(f"- `{name}`: " + ", ".join(f"`{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}`"
                                               for k, v in values.items()))
    for group, names in groups.items():
        out += ["", f"## {group}", "", "| setting | default | what it does |", "|---|---|---|"]
        for name in names:
            value = defaults[name]
            shown = json.dumps(list(value) if isinstance(value, tuple) else value)
            if isinstance(value, float) and len(shown) > 8:
                shown = f"{value:.4g}"
            choices = f" One of: {', '.join(f'`{_shown(c)}`' for c in CHOICES[name])}." if name in CHOICES else ""
            out.append(f"| `{name}` | `{shown}` | {docs.get(name, '')}{choices} |".replace("|  |", "| |"))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["--markdown"]:
        sys.exit("usage: python -m SemiSupSegTraining.config --markdown [PATH]   (docs/settings.md from TrainConfig)")
    text = settings_markdown()
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
