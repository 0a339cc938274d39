"""The baselines (SemiSupSegTraining.objectives): Mean Teacher, UA-MT and CPS. Their loss pieces against values
computed by hand on tiny tensors, one training step of each, exact resume, and model files that segment with
the network(s) each method names."""

import math
import os
import shutil
import threading

import helpers  # noqa: F401  (one torch thread: tiny networks on a busy machine)
import pytest
import torch

from SemiSupSegTraining import objectives as O
from SemiSupSegTraining import train as training
from SemiSupSegTraining.cli import main
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.data import load_training_cases
from SemiSupSegTraining.errors import Cancelled, InputError
from SemiSupSegTraining.infer import Segmenter
from SemiSupSegTraining.manifest import load_manifest
from SemiSupSegTraining.modelfile import load_trusted_data, read_metadata, save_model
from SemiSupSegTraining.networks import VNet

LN2, LN3 = math.log(2.0), math.log(3.0)


# ------------------------------------------------------------------------------ the pieces, by hand

def test_sigmoid_rampup_by_hand():
    assert O.sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5.0))
    assert O.sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))   # exp(-5 * 0.5²)
    assert O.sigmoid_rampup(10, 10) == 1.0 and O.sigmoid_rampup(25, 10) == 1.0
    assert O.sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5.0))
    assert O.sigmoid_rampup(0, 0) == 1.0


def test_ema_decay_copies_first_then_099_then_0999():
    assert O.ema_decay(0, 100) == 0.0                       # min(1 - 1/1, 0.99): the first update copies
    assert O.ema_decay(1, 100) == 0.5                       # 1 - 1/2
    assert O.ema_decay(99, 100) == pytest.approx(0.99)      # min(0.99, 0.99)
    assert O.ema_decay(100, 100) == pytest.approx(1 - 1 / 101)   # after the ramp-up: min(1 - 1/101, 0.999)
    assert O.ema_decay(5000, 100) == pytest.approx(0.999)


def test_ema_update_by_hand():
    teacher, student = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1)), \
        torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
            if t.dtype.is_floating_point:
                t.fill_(1.0)
                s.fill_(3.0)
        student[1].num_batches_tracked.fill_(7)
    O.ema_update(teacher, student, 0.75)
    assert torch.equal(teacher[0].weight, torch.full((1, 2), 1.5))      # 0.75 * 1 + 0.25 * 3
    assert torch.equal(teacher[1].running_mean, torch.tensor([1.5]))
    assert int(teacher[1].num_batches_tracked) == 7                      # counters copied
    assert torch.equal(student[0].weight, torch.full((1, 2), 3.0))       # the student is untouched


def _two_voxels():
    """Logits (B=1, K=2, 2 voxels): softmax (0.5, 0.5) at voxel 0 and (0.25, 0.75) at voxel 1."""
    return torch.tensor([[[0.0, 0.0], [0.0, LN3]]])


def test_softmax_mse_by_hand():
    teacher = torch.tensor([[[1.0, 0.25], [0.0, 0.75]]])   # (1, 0) at voxel 0, (0.25, 0.75) at voxel 1
    # squared differences: voxel 0 (0.25, 0.25), voxel 1 (0, 0); mean over the 4 values = 0.125
    assert float(O.softmax_mse(_two_voxels(), teacher)) == pytest.approx(0.125)
    assert float(O.softmax_mse(_two_voxels(), teacher, torch.tensor([[True, False]]))) == pytest.approx(0.25)
    assert float(O.softmax_mse(_two_voxels(), teacher, torch.tensor([[False, True]]))) == pytest.approx(0.0)
    assert float(O.softmax_mse(_two_voxels(), teacher, torch.tensor([[False, False]]))) == 0.0


def test_mc_uncertainty_and_threshold_by_hand():
    # voxel 0: the two samples disagree completely (mean 0.5, 0.5: entropy ln 2); voxel 1: both say class 0
    samples = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 1.0], [1.0, 0.0]]]])   # (T=2, B=1, K=2, 2)
    entropy = O.mc_uncertainty(samples)
    assert entropy.shape == (1, 2)
    assert float(entropy[0, 0]) == pytest.approx(LN2, abs=1e-5)
    assert float(entropy[0, 1]) == pytest.approx(0.0, abs=1e-5)
    assert O.uncertainty_threshold(0, 100, 2) == pytest.approx((0.75 + 0.25 * math.exp(-5.0)) * LN2)
    assert O.uncertainty_threshold(100, 100, 2) == pytest.approx(LN2)
    assert O.uncertainty_threshold(100, 100, 3) == pytest.approx(LN3)


def test_cross_pseudo_loss_by_hand():
    other = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], requires_grad=True)   # argmax: class 0, then class 1
    logits = _two_voxels().requires_grad_(True)
    loss = O.cross_pseudo_loss(logits, other)
    assert float(loss.detach()) == pytest.approx((-math.log(0.5) - math.log(0.75)) / 2)   # 0.4904
    loss.backward()
    assert logits.grad is not None and other.grad is None   # the pseudo label carries no gradient


def test_input_noise_is_clipped_and_seeded():
    x = torch.zeros(2, 1, 8, 8, 8)
    first = O.noisy(x, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(first, O.noisy(x, 0.1, torch.Generator().manual_seed(1)))
    assert float(first.abs().max()) == pytest.approx(0.2)     # clipped at 2σ, and some values reach it
    assert 0.05 < float(first.std()) < 0.1


# ------------------------------------------------------------------------------ one step of each

def _trainer(phantom_dataset, method, **overrides):
    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("tiny", dict({"device": "cpu", "method": method, "iterations": 10}, **overrides))
    return training.Trainer(config, len(manifest.classes), labeled, unlabeled, torch.device("cpu"))


def _float_state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if v.dtype.is_floating_point}


@pytest.mark.parametrize("method", ["mean-teacher", "ua-mt"])
def test_mean_teacher_trains_the_student_and_the_teacher_follows_by_ema(phantom_dataset, method):
    trainer = _trainer(phantom_dataset, method)
    assert isinstance(trainer.net_a, VNet) and isinstance(trainer.net_b, VNet)
    assert len(trainer.optimizers) == 1 and trainer.unlabeled is not None
    teacher_calls = []
    trainer.net_b.register_forward_hook(lambda *args: teacher_calls.append(1))
    terms = trainer.step()
    passes = math.ceil(trainer.config.mc_samples / O.MC_COPIES_PER_PASS)
    assert len(teacher_calls) == (1 + passes if method == "ua-mt" else 1)
    assert all(p.grad is None for p in trainer.net_b.parameters())
    student = _float_state(trainer.net_a)
    assert all(torch.equal(v, trainer.net_b.state_dict()[k]) for k, v in student.items())  # decay 0: a copy
    before = _float_state(trainer.net_b)
    trainer.step()                                                                        # decay 0.5
    for name, value in _float_state(trainer.net_a).items():
        if "running" not in name:  # batch norm's statistics also move in the teacher's own forward pass
            assert torch.allclose(trainer.net_b.state_dict()[name], 0.5 * before[name] + 0.5 * value, atol=1e-6)
    expected = terms["sup_a"] + terms["consistency_weight"] * terms["consistency"]
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-5)
    if method == "ua-mt":
        assert 0.0 <= float(terms["certain_fraction"]) <= 1.0


def test_cps_trains_two_differently_initialised_vnets(phantom_dataset):
    trainer = _trainer(phantom_dataset, "cps")
    assert isinstance(trainer.net_a, VNet) and isinstance(trainer.net_b, VNet)
    assert not torch.equal(trainer.net_a.block1[0].weight, trainer.net_b.block1[0].weight)
    before = _float_state(trainer.net_b)
    terms = trainer.step()
    assert len(trainer.optimizers) == 2
    assert any(not torch.equal(before[k], v) for k, v in _float_state(trainer.net_b).items())
    expected = terms["sup_a"] + terms["sup_b"] + terms["cps_weight"] * (terms["cps_a"] + terms["cps_b"])
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms["cps_a"]) > 0 and float(terms["cps_b"]) > 0


@pytest.mark.parametrize("setting", [{"mc_samples": 1}, {"ema_decay": 1.0}, {"cps_weight": -1.0},
                                     {"method": "mean_teacher"}])
def test_bad_baseline_setting_is_one_sentence(setting):
    with pytest.raises(InputError) as error:
        preset_config("tiny", setting)
    assert str(error.value).count(".") >= 1 and "\n" not in str(error.value)


# ------------------------------------------------------------------------------ resume, model files, CLI

@pytest.mark.parametrize("method", ["mean-teacher", "ua-mt", "cps"])
def test_baseline_resumes_exactly_and_its_model_file_segments(phantom_dataset, tmp_path, method):
    config = preset_config("tiny", {"iterations": 4, "device": "cpu", "checkpoint_every": 2, "method": method})
    straight = training.train(phantom_dataset["train"], str(tmp_path / "straight"), config, progress="none")
    stop = threading.Event()
    folder = str(tmp_path / "stopped")

    def on_event(event):
        if event["event"] == "progress" and event["iteration"] == 2:
            stop.set()

    with pytest.raises(Cancelled):
        training.train(phantom_dataset["train"], folder, config, progress="none", callback=on_event,
                       cancel_event=stop)
    resumed = training.train(None, folder, progress="none", resume=True)
    a, b = (load_trusted_data(p) for p in (straight, resumed))
    for net in ("weights_a", "weights_b"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), f"{net} differs after resume"
    meta = read_metadata(straight)
    assert meta["networks"]["a"] == meta["networks"]["b"] == "VNet"
    assert meta["inference"] == ("both" if method == "cps" else "b")
    assert meta["config"]["method"] == method
    assert main(["segment", "--model", straight, "--input", load_manifest(phantom_dataset["test"]).cases[0].image,
                 "--output", str(tmp_path / "seg.nii.gz"), "--device", "cpu"]) == 0
    assert os.path.exists(tmp_path / "seg.nii.gz")


@pytest.mark.parametrize("inference", ["a", "b", "both", None])
def test_segmenter_uses_the_networks_the_model_file_names(tiny_model_file, tmp_path, inference):
    data = load_trusted_data(tiny_model_file)
    meta = dict(data["metadata"])
    if inference is not None:
        meta["inference"] = inference
    path = save_model(str(tmp_path / "model.pt"), data["weights_a"], data["weights_b"], meta)
    segmenter = Segmenter(path, device="cpu", amp=False, disagreement=False)
    window = torch.randn(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        pa, pb = (torch.softmax(net(window)[0], 1) for net in (segmenter.net_a, segmenter.net_b))
        expected = {"a": pa, "b": pb}.get(inference, 0.5 * (pa + pb))  # older files (None): both averaged
        assert torch.allclose(segmenter._predictor(window), expected, atol=1e-5)
    assert not torch.allclose(pa, pb, atol=1e-3)  # otherwise the test could not tell them apart


@pytest.mark.parametrize("change", [{"inference": "c"}, {"networks": "UNet"}])
def test_model_file_with_unknown_networks_or_inference_is_refused(tiny_model_file, tmp_path, change):
    data = load_trusted_data(tiny_model_file)
    meta = dict(data["metadata"])
    if "networks" in change:
        meta["networks"] = dict(meta["networks"], a=change["networks"])
    else:
        meta.update(change)
    path = save_model(str(tmp_path / "model.pt"), data["weights_a"], data["weights_b"], meta)
    with pytest.raises(InputError, match="invalid metadata"):
        read_metadata(path)


def test_cli_trains_a_baseline(phantom_dataset, tmp_path, capsys):
    output = str(tmp_path / "run")
    assert main(["train", "--manifest", phantom_dataset["train"], "--output", output, "--preset", "tiny",
                 "--iterations", "2", "--device", "cpu", "--progress", "none", "--set", "method=cps"]) == 0
    assert read_metadata(os.path.join(output, "model.pt"))["config"]["method"] == "cps"
    # Retraining from it (as the Slicer module does after corrections) needs its method: one sentence says so.
    capsys.readouterr()
    assert main(["train", "--manifest", phantom_dataset["train"], "--output", str(tmp_path / "again"), "--preset",
                 "tiny", "--iterations", "2", "--device", "cpu", "--progress", "none", "--init-model",
                 os.path.join(output, "model.pt")]) == 2
    error = capsys.readouterr().err
    assert "--set method=cps" in error and "VNet+VNet" in error and error.count("\n") == 1
    assert not os.path.exists(tmp_path / "again")
    shutil.rmtree(output)
