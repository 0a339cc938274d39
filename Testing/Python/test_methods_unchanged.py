"""Every method's first training steps at its default settings, against the losses recorded before the
methods became plug-ins (``methods_unchanged.json``): the same terms, the same random draws, in the same
order. A refactor that changes a method's arithmetic or the order of its draws fails here.

The steps run in a child process on one thread with PyTorch's and oneDNN's kernels capped at AVX2
(:data:`SAME_KERNELS`), which every x86-64 machine this runs on has: an AVX-512 CPU would otherwise round
differently from an AVX2 one by up to 0.3 % at the third step. Recorded the same way
(``python Testing/Python/test_methods_unchanged.py --record``); before the cap, the record made on an
AVX-512 machine matched the plug-in methods exactly there, and the capped record differs from it only
from the third step on, by rounding.
"""

import json
import os
import subprocess
import sys

import helpers  # noqa: F401  (one torch thread)
import pytest
import torch

from SemiSupSegTraining import train as training
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.data import load_training_cases
from SemiSupSegTraining.manifest import load_manifest

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "methods_unchanged.json")
#: The environment of the child process: kernels every x86-64 CI machine has, so that values agree exactly.
SAME_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
STEPS = 3
#: name -> settings on top of the tiny preset (10 iterations, so the schedules move)
RUNS = {
    "ours": {"method": "ours"},
    "ours-joint": {"method": "ours", "sequential_backward": False},
    "ours-cross": {"method": "ours", "pseudo_label": "cross"},
    "ours-ensemble-negatives": {"method": "ours", "pseudo_label": "ensemble", "contrastive_pull": "negatives"},
    "supervised": {"method": "supervised", "augmentation": "paper"},  # recorded before its default became strong
    "reference": {"method": "reference"},
    "mean-teacher": {"method": "mean-teacher"},
    "ua-mt": {"method": "ua-mt"},
    "cps": {"method": "cps"},
    "bcp": {"method": "bcp", "bcp_pretrain_iterations": 1},   # step 0 pre-trains, 1 switches, 2 self-trains
    # The baselines as they trained before their authors' dropout, CPS's own schedule and BCP's pre-training
    # rule became the defaults: the earlier behaviour stays reachable, bit for bit.
    "mean-teacher-bottleneck-dropout": {"method": "mean-teacher", "decoder_dropout": False},
    "ua-mt-bottleneck-dropout": {"method": "ua-mt", "decoder_dropout": False},
    "cps-hybrid": {"method": "cps", "cps_rampup": 0.4, "cps_supervision": "ce+dice", "cps_segments": "both"},
    "bcp-short-pretraining": {"method": "bcp", "bcp_pretrain": 0.1, "bcp_pretrain_iterations": 0,
                              "decoder_dropout": False},
}


def run(phantom_train_manifest, settings):
    """{"terms": [the STEPS steps' terms], "weights": [sum of each network's parameters]}."""
    manifest = load_manifest(phantom_train_manifest)
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("tiny", dict({"device": "cpu", "iterations": 10}, **settings))
    trainer = training.Trainer(config, len(manifest.classes), labeled, unlabeled, torch.device("cpu"))
    terms = [{k: float(v) for k, v in trainer.step().items()} for _ in range(STEPS)]
    weights = [float(sum(p.detach().double().sum() for p in net.parameters()))
               for net in (trainer.net_a, trainer.net_b)]
    return {"terms": terms, "weights": weights}


def record(out: str) -> None:
    """Every run of :data:`RUNS` in a child process with :data:`SAME_KERNELS`, written to ``out``."""
    root = os.path.dirname(os.path.dirname(HERE))
    env = dict(os.environ, **SAME_KERNELS)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, HERE, env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--write", out], env=env, check=True)


@pytest.fixture(scope="module")
def recorded_now(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("unchanged") / "now.json")
    record(out)
    with open(out, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_method_trains_as_recorded(recorded_now, name):
    with open(RECORD, encoding="utf-8") as f:
        expected = json.load(f)[name]
    got = recorded_now[name]
    assert [sorted(t) for t in got["terms"]] == [sorted(t) for t in expected["terms"]]
    for step, (g, e) in enumerate(zip(got["terms"], expected["terms"])):
        for key in e:
            assert g[key] == pytest.approx(e[key], rel=1e-5, abs=1e-7), f"{name} step {step}: {key}"
    assert got["weights"] == pytest.approx(expected["weights"], rel=1e-6)


if __name__ == "__main__" and "--record" in sys.argv:
    record(RECORD)
elif __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    from SemiSupSegTraining.phantoms import write_phantom_dataset

    with tempfile.TemporaryDirectory() as folder:  # the phantom_dataset fixture's cases
        train_manifest, _ = write_phantom_dataset(folder, labeled=1, unlabeled=1, test=1, shape_zyx=(16, 32, 32))
        results = {name: run(train_manifest, settings) for name, settings in RUNS.items()}
    with open(sys.argv[sys.argv.index("--write") + 1], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
