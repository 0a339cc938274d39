"""Every method's first training steps at its default settings, against the losses recorded before the
methods became plug-ins (``methods_unchanged.json``): the same terms, the same random draws, in the same
order. A refactor that changes a method's arithmetic or the order of its draws fails here.

Recorded on one thread (``python Testing/Python/test_methods_unchanged.py --record``). On the machine that
recorded them the values agree exactly; another CPU's vector units may round differently, hence the small
tolerance.
"""

import json
import os
import sys

import helpers  # noqa: F401  (one torch thread)
import pytest
import torch

from SemiSupSegTraining import train as training
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.data import load_training_cases
from SemiSupSegTraining.manifest import load_manifest

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "methods_unchanged.json")
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


@pytest.mark.parametrize("name", sorted(RUNS))
def test_method_trains_as_recorded(phantom_dataset, name):
    with open(RECORD) as f:
        expected = json.load(f)[name]
    got = run(phantom_dataset["train"], RUNS[name])
    assert [sorted(t) for t in got["terms"]] == [sorted(t) for t in expected["terms"]]
    for step, (g, e) in enumerate(zip(got["terms"], expected["terms"])):
        for key in e:
            assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-6), f"{name} step {step}: {key}"
    assert got["weights"] == pytest.approx(expected["weights"], rel=1e-5)


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    from SemiSupSegTraining.phantoms import write_phantom_dataset

    with tempfile.TemporaryDirectory() as folder:  # the phantom_dataset fixture's cases
        train_manifest, _ = write_phantom_dataset(folder, labeled=1, unlabeled=1, test=1, shape_zyx=(16, 32, 32))
        results = {name: run(train_manifest, settings) for name, settings in RUNS.items()}
    out = sys.argv[sys.argv.index("--record") + 1] if len(sys.argv) > sys.argv.index("--record") + 1 else RECORD
    with open(out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
