"""The baselines (SemiSupSegTraining.methods): Mean Teacher, UA-MT, CPS and BCP. Their loss pieces against
values computed by hand on tiny tensors, one training step of each, exact resume, and model files that segment
with the network(s) each method names."""

import math
import os
import shutil
import threading

import helpers  # noqa: F401  (one torch thread: tiny networks on a busy machine)
import pytest
import torch

from SemiSupSegTraining import methods
from SemiSupSegTraining.methods import bcp as BCP, common, cps as CPS, mean_teacher as MT
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
    assert common.sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5.0))
    assert common.sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))   # exp(-5 * 0.5²)
    assert common.sigmoid_rampup(10, 10) == 1.0 and common.sigmoid_rampup(25, 10) == 1.0
    assert common.sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5.0))
    assert common.sigmoid_rampup(0, 0) == 1.0


def test_ema_decay_copies_first_then_stays_at_099():
    assert MT.ema_decay(0, 100) == 0.0                       # min(1 - 1/1, 0.99): the first update copies
    assert MT.ema_decay(1, 100) == 0.5                       # 1 - 1/2
    assert MT.ema_decay(99, 100) == pytest.approx(0.99)      # min(1 - 1/100, 0.99)
    assert MT.ema_decay(100, 100) == pytest.approx(0.99)     # UA-MT's code: 0.99 after the ramp-up too
    assert MT.ema_decay(5000, 100) == pytest.approx(0.99)
    assert MT.ema_decay(5000, 100, 0.99, 0.999) == pytest.approx(0.999)   # the switch, when asked for


def test_consistency_rampup_is_ua_mts_40_steps_scaled_to_the_budget():
    # UA-MT's code at 6000 iterations: sigmoid_rampup(iteration // 150, 40)
    assert MT.consistency_rampup(149, 6000, 1.0) == pytest.approx(math.exp(-5.0))               # step 0
    assert MT.consistency_rampup(150, 6000, 1.0) == pytest.approx(math.exp(-5.0 * (39 / 40) ** 2))
    assert MT.consistency_rampup(3000, 6000, 1.0) == pytest.approx(math.exp(-1.25))            # step 20
    assert MT.consistency_rampup(6000, 6000, 1.0) == 1.0
    # 300 iterations: a step every 7.5 iterations (floor(40 · 7 / 300) = 0, floor(40 · 8 / 300) = 1)
    assert MT.consistency_rampup(7, 300, 1.0) == pytest.approx(math.exp(-5.0))
    assert MT.consistency_rampup(8, 300, 1.0) == pytest.approx(math.exp(-5.0 * (39 / 40) ** 2))
    assert MT.consistency_rampup(75, 300, 0.5) == pytest.approx(math.exp(-1.25))   # half the run: step 20
    assert MT.consistency_rampup(0, 300, 0.0) == 1.0


def test_ema_update_averages_parameters_only_by_hand():
    teacher, student = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1)), \
        torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
            if t.dtype.is_floating_point:
                t.fill_(1.0)
                s.fill_(3.0)
        student[1].num_batches_tracked.fill_(7)
    common.ema_update(teacher, student, 0.75)
    assert torch.equal(teacher[0].weight, torch.full((1, 2), 1.5))      # 0.75 * 1 + 0.25 * 3
    assert torch.equal(teacher[1].weight, torch.tensor([1.5]))          # batch norm's affine weight too
    assert torch.equal(teacher[1].running_mean, torch.tensor([1.0]))    # its statistics are the teacher's own
    assert int(teacher[1].num_batches_tracked) == 0
    assert torch.equal(student[0].weight, torch.full((1, 2), 3.0))       # the student is untouched


def _two_voxels():
    """Logits (B=1, K=2, 2 voxels): softmax (0.5, 0.5) at voxel 0 and (0.25, 0.75) at voxel 1."""
    return torch.tensor([[[0.0, 0.0], [0.0, LN3]]])


def test_softmax_mse_by_hand():
    teacher = torch.tensor([[[1.0, 0.25], [0.0, 0.75]]])   # (1, 0) at voxel 0, (0.25, 0.75) at voxel 1
    # squared differences: voxel 0 (0.25, 0.25), voxel 1 (0, 0); mean over the 4 values = 0.125
    assert float(MT.softmax_mse(_two_voxels(), teacher)) == pytest.approx(0.125)
    assert float(MT.softmax_mse(_two_voxels(), teacher, torch.tensor([[True, False]]))) == pytest.approx(0.25)
    assert float(MT.softmax_mse(_two_voxels(), teacher, torch.tensor([[False, True]]))) == pytest.approx(0.0)
    assert float(MT.softmax_mse(_two_voxels(), teacher, torch.tensor([[False, False]]))) == 0.0


def test_mean_teacher_loss_by_hand():
    # one labeled crop of 2 voxels (logits 0: softmax 0.5, 0.5; labels 0, 1), one unlabeled (_two_voxels)
    logits = torch.cat([torch.zeros(1, 2, 2), _two_voxels()])
    labels = torch.tensor([[0, 1]])
    teacher = torch.tensor([[[1.0, 0.25], [0.0, 0.75]]])
    # CE = ln 2; foreground Dice 1 - (2 · 0.5 + ε) / (1 + 1 + ε) = 0.5; supervised 0.5 · (ln 2 + 0.5) = 0.59657;
    # consistency (test above) 0.125, weighted 0.1 → 0.0125
    loss, sup, consistency = MT.mean_teacher_loss(logits, labels, teacher, None, 0.1, 0.5, 2)
    assert float(sup) == pytest.approx(0.5 * (LN2 + 0.5), abs=1e-5)
    assert float(consistency) == pytest.approx(0.125)
    assert float(loss) == pytest.approx(0.5 * (LN2 + 0.5) + 0.0125, abs=1e-5)
    # the certain voxel only: consistency 0.25 → 0.025
    loss, _, _ = MT.mean_teacher_loss(logits, labels, teacher, torch.tensor([[True, False]]), 0.1, 0.5, 2)
    assert float(loss) == pytest.approx(0.5 * (LN2 + 0.5) + 0.025, abs=1e-5)
    # no unlabeled crops: the supervised term alone (weight 1: the plain CE + Dice)
    loss, sup, _ = MT.mean_teacher_loss(logits[:1], labels, None, None, 0.1, 1.0, 2)
    assert float(loss) == float(sup) == pytest.approx(LN2 + 0.5, abs=1e-5)


def test_mc_uncertainty_and_threshold_by_hand():
    # voxel 0: the two samples disagree completely (mean 0.5, 0.5: entropy ln 2); voxel 1: both say class 0
    samples = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 1.0], [1.0, 0.0]]]])   # (T=2, B=1, K=2, 2)
    entropy = MT.mc_uncertainty(samples)
    assert entropy.shape == (1, 2)
    assert float(entropy[0, 0]) == pytest.approx(LN2, abs=1e-5)
    assert float(entropy[0, 1]) == pytest.approx(0.0, abs=1e-5)
    assert MT.uncertainty_threshold(0, 100, 2) == pytest.approx((0.75 + 0.25 * math.exp(-5.0)) * LN2)
    assert MT.uncertainty_threshold(100, 100, 2) == pytest.approx(LN2)
    assert MT.uncertainty_threshold(100, 100, 3) == pytest.approx(LN3)
    # at the start H = (0.75 + 0.25 e^-5) ln 2 = 0.521: voxel 0 (ln 2) is uncertain, voxel 1 (0) certain
    assert (entropy < MT.uncertainty_threshold(0, 100, 2)).tolist() == [[False, True]]


def test_cross_pseudo_loss_by_hand():
    other = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], requires_grad=True)   # argmax: class 0, then class 1
    logits = _two_voxels().requires_grad_(True)
    loss = CPS.cross_pseudo_loss(logits, other)
    assert float(loss.detach()) == pytest.approx((-math.log(0.5) - math.log(0.75)) / 2)   # 0.4904
    loss.backward()
    assert logits.grad is not None and other.grad is None   # the pseudo label carries no gradient


# ------------------------------------------------------------------------------ BCP's pieces, by hand

def test_bcp_box_is_two_thirds_of_each_axis():
    # 3 voxels an axis: a box of int(3 · 2/3) = 2, its corner drawn from [0, 3 - 2) = {0}
    mask = BCP.bcp_box_mask((3, 3, 3), 2 / 3, torch.Generator().manual_seed(5))
    expected = torch.ones(3, 3, 3, dtype=torch.int64)
    expected[:2, :2, :2] = 0
    assert torch.equal(mask, expected)
    # 6 × 9 × 3: a 4 × 6 × 2 box (48 voxels) somewhere inside, the same for the same seed
    mask = BCP.bcp_box_mask((6, 9, 3), 2 / 3, torch.Generator().manual_seed(5))
    inside = (mask == 0).nonzero()
    assert len(inside) == 4 * 6 * 2
    assert (inside.max(0).values - inside.min(0).values + 1).tolist() == [4, 6, 2]
    assert torch.equal(mask, BCP.bcp_box_mask((6, 9, 3), 2 / 3, torch.Generator().manual_seed(5)))


def test_copy_paste_puts_the_inner_crop_inside_the_box():
    outer = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])      # (B=1, C=1, 1, 4)
    inner = torch.tensor([[[[10.0, 20.0, 30.0, 40.0]]]])
    mask = torch.tensor([[1, 0, 0, 1]])                   # the box: voxels 1 and 2
    assert BCP.copy_paste(outer, inner, mask).reshape(-1).tolist() == [1.0, 20.0, 30.0, 4.0]
    labels = BCP.copy_paste(torch.tensor([[[0, 1, 1, 0]]]), torch.tensor([[[2, 2, 0, 2]]]), mask)
    assert labels.tolist() == [[[0, 2, 0, 0]]]


def test_halves_are_bcps_sub_batches():
    assert BCP.halves(1) == (slice(0, 1), slice(0, 1))   # one crop: pasted into itself's partner, the same crop
    assert BCP.halves(2) == (slice(0, 1), slice(1, 2))
    assert BCP.halves(4) == (slice(0, 2), slice(2, 4))


SMOOTH = 1e-5


def test_bcp_dice_counts_the_background_and_the_mask_by_hand():
    logits = torch.zeros(1, 2, 2)                         # softmax 0.5, 0.5 at both voxels
    target = torch.tensor([[0, 1]])
    # each class: inter 0.5, union (0.5 + 0.5) + 1 = 2 → Dice (1 + ε) / (2 + ε); loss 1 - that
    assert float(BCP.bcp_dice(logits, target, 2)) == pytest.approx(1 - (1 + SMOOTH) / (2 + SMOOTH), abs=1e-7)
    # voxel 0 only: background inter 0.5, union 1.5; foreground inter 0, union 0.5
    masked = BCP.bcp_dice(logits, target, 2, torch.tensor([[1, 0]]))
    dice = ((1 + SMOOTH) / (1.5 + SMOOTH) + SMOOTH / (0.5 + SMOOTH)) / 2
    assert float(masked) == pytest.approx(1 - dice, abs=1e-6)   # 0.66666


def test_bcp_mix_loss_weighs_each_region_against_its_own_target_by_hand():
    # voxel 0 (outside the box) softmax 0.25, 0.75; voxel 1 (inside) 0.5, 0.5
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]])
    outer, inner, mask = torch.tensor([[0, 1]]), torch.tensor([[1, 0]]), torch.tensor([[1, 0]])
    # outside, target 0: background inter 0.25, union 1.25; foreground inter 0, union 0.75; CE -ln 0.25
    dice_out = 1 - ((0.5 + SMOOTH) / (1.25 + SMOOTH) + SMOOTH / (0.75 + SMOOTH)) / 2          # 0.79999
    # inside, target 0: background inter 0.5, union 1.5; foreground inter 0, union 0.5; CE ln 2
    dice_in = 1 - ((1 + SMOOTH) / (1.5 + SMOOTH) + SMOOTH / (0.5 + SMOOTH)) / 2               # 0.66666
    expected = (1.0 * dice_out + 0.5 * dice_in + 1.0 * math.log(4) + 0.5 * LN2) / 2           # 1.4331
    loss = BCP.bcp_mix_loss(logits, outer, inner, mask, 1.0, 0.5, 2)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    # the unlabeled-outside direction: the weights swap (pseudo label outside weighs 0.5)
    swapped = (0.5 * dice_out + 1.0 * dice_in + 0.5 * math.log(4) + 1.0 * LN2) / 2
    assert float(BCP.bcp_mix_loss(logits, outer, inner, mask, 0.5, 1.0, 2)) == pytest.approx(swapped, abs=1e-6)


def test_largest_component_per_class_with_full_connectivity():
    labels = torch.zeros(2, 1, 3, 5, dtype=torch.int64)    # two crops of 1 × 3 × 5 voxels
    for y, x in ((0, 0), (1, 1), (2, 2)):                  # class 1: a diagonal chain of 3 (one component
        labels[0, 0, y, x] = 1                             # with full connectivity, three without) ...
    labels[0, 0, 0, 4] = labels[0, 0, 1, 4] = 1            # ... and a straight pair
    labels[0, 0, 2, 4] = 2                                 # class 2: its only component
    out = BCP.largest_components(labels, 3)
    expected = torch.zeros_like(labels)
    for y, x in ((0, 0), (1, 1), (2, 2)):
        expected[0, 0, y, x] = 1
    expected[0, 0, 2, 4] = 2
    assert torch.equal(out, expected)                      # the pair is gone; the empty crop stays empty


def test_input_noise_is_clipped_and_seeded():
    x = torch.zeros(2, 1, 8, 8, 8)
    first = MT.noisy(x, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(first, MT.noisy(x, 0.1, torch.Generator().manual_seed(1)))
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


def _record_inputs(trainer):
    """{"a": [...], "b": [...]}: each network's input batches from here on."""
    seen = {"a": [], "b": []}
    for name, net in (("a", trainer.net_a), ("b", trainer.net_b)):
        net.register_forward_hook(lambda m, args, out, name=name: seen[name].append(args[0].detach().clone()))
    return seen


def _parameters(net):
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("method", ["mean-teacher", "ua-mt"])
def test_mean_teacher_trains_the_student_and_the_teacher_follows_by_ema(phantom_dataset, method):
    trainer = _trainer(phantom_dataset, method, unlabeled_views=False)
    assert isinstance(trainer.net_a, VNet) and isinstance(trainer.net_b, VNet)
    assert len(trainer.optimizers) == 1 and trainer.unlabeled is not None
    seen = _record_inputs(trainer)
    terms = trainer.step()
    passes = math.ceil(trainer.config.mc_samples / MT.MC_COPIES_PER_PASS)
    assert len(seen["b"]) == (1 + passes if method == "ua-mt" else 1)
    # Noise on the teacher's input only: teacher − student input is one clipped noise (|·| ≤ 2σ = 0.2), not
    # the difference of two (which reaches 0.4), and not zero.
    n = trainer.config.batch_labeled
    difference = (seen["b"][0] - seen["a"][0][n:]).abs()
    assert 0.1 < float(difference.max()) <= 0.2 + 1e-6
    assert all(p.grad is None for p in trainer.net_b.parameters())
    student = _parameters(trainer.net_a)
    assert all(torch.equal(s, t) for s, t in zip(student, trainer.net_b.parameters()))  # decay 0: a copy
    before = _parameters(trainer.net_b)
    trainer.step()                                                                        # decay 0.5
    for old, new, teacher in zip(before, _parameters(trainer.net_a), trainer.net_b.parameters()):
        assert torch.allclose(teacher, 0.5 * old + 0.5 * new, atol=1e-6)
    # iteration 0 of 10: weight 0.1 · e^-5 (UA-MT's ramp-up over the whole run)
    assert float(terms["consistency_weight"]) == pytest.approx(0.1 * math.exp(-5.0))


def test_bcp_pretrains_on_labeled_crops_then_its_teacher_starts_as_the_student(phantom_dataset):
    trainer = _trainer(phantom_dataset, "bcp", bcp_pretrain_iterations=2)   # 10 iterations: 2 of pre-training
    assert len(trainer.optimizers) == 1 and trainer.net_a is not trainer.net_b
    seen = _record_inputs(trainer)
    initial = _parameters(trainer.net_b)
    for _ in range(2):
        trainer.step()
    assert [len(x) for x in seen["a"]] == [1, 1] and seen["b"] == []          # one mixed labeled crop a step; the teacher idle
    assert all(torch.equal(t, p) for t, p in zip(initial, trainer.net_b.parameters()))
    assert trainer.optimizers[0].state                 # momentum from the pre-training ...
    student = _parameters(trainer.net_a)
    terms = trainer.step()                             # iteration 2: self-training starts
    assert [len(x) for x in seen["a"][2:]] == [2] and [len(x) for x in seen["b"]] == [1]  # both mixed crops in one pass; the teacher on the unlabeled
    assert set(terms) >= {"loss_l", "loss_u"}
    # the teacher was the student's copy, then one EMA step of 0.99 toward the updated student
    for old, new, teacher in zip(student, _parameters(trainer.net_a), trainer.net_b.parameters()):
        assert torch.allclose(teacher, 0.99 * old + 0.01 * new, atol=1e-6)
    # ... was dropped at the switch (BCP's self-training builds a new optimiser): one step of plain SGD
    # (with the pre-training's momentum kept, the buffer would be 0.9 · that + this step's gradient)
    decay = trainer.config.weight_decay
    for old, param in zip(student, trainer.net_a.parameters()):
        momentum = trainer.optimizers[0].state[param]["momentum_buffer"]
        assert torch.allclose(momentum, param.grad + decay * old, atol=1e-6)


def _inference(config):
    return methods.create(config).inference_networks()


def test_the_student_segments_unless_asked_for_the_teacher():
    assert _inference(preset_config("tiny", {"method": "ua-mt"})) == "a"
    assert _inference(preset_config("tiny", {"method": "ua-mt", "teacher_segments": True})) == "b"
    assert _inference(preset_config("tiny", {"method": "bcp"})) == "a"
    assert _inference(preset_config("tiny", {"method": "ours"})) == "both"


def test_cps_trains_two_differently_initialised_vnets(phantom_dataset):
    trainer = _trainer(phantom_dataset, "cps")
    assert isinstance(trainer.net_a, VNet) and isinstance(trainer.net_b, VNet)
    assert not torch.equal(trainer.net_a.block1[0].weight, trainer.net_b.block1[0].weight)
    before = _float_state(trainer.net_b)
    terms = trainer.step()
    assert len(trainer.optimizers) == 2
    assert any(not torch.equal(before[k], v) for k, v in _float_state(trainer.net_b).items())
    assert float(terms["cps_a"]) > 0 and float(terms["cps_b"]) > 0


def test_every_semi_supervised_method_gives_each_network_its_own_view(phantom_dataset):
    for method in ("cps", "bcp"):
        trainer = _trainer(phantom_dataset, method, bcp_pretrain_iterations=0, bcp_pretrain=0.0)
        seen = _record_inputs(trainer)
        trainer.step()
        if method == "cps":  # the same labeled crop, two views of the unlabeled one
            assert torch.equal(seen["a"][0][:1], seen["b"][0][:1])
            assert not torch.allclose(seen["a"][0][1:], seen["b"][0][1:], atol=1e-3)
        else:  # BCP's teacher sees one view; the student's mixed crop holds the other (outside the box)
            mixed_u = seen["a"][0][1]  # unlabeled outside the box, labeled inside
            assert not torch.allclose(mixed_u, seen["b"][0][0], atol=1e-3)


@pytest.mark.parametrize("setting", [{"mc_samples": 1}, {"ema_decay": 1.0}, {"cps_weight": -1.0},
                                     {"method": "mean_teacher"}, {"consistency_rampup": 2.0},
                                     {"bcp_box": 1.0}, {"method": "bcp", "batch_unlabeled": 2}])
def test_bad_baseline_setting_is_one_sentence(setting):
    with pytest.raises(InputError) as error:
        preset_config("tiny", setting)
    assert str(error.value).count(".") >= 1 and "\n" not in str(error.value)


# ------------------------------------------------------------------------------ resume, model files, CLI

@pytest.mark.parametrize("method", ["mean-teacher", "ua-mt", "cps", "bcp"])
def test_baseline_resumes_exactly_and_its_model_file_segments(phantom_dataset, tmp_path, method):
    # bcp: 2 pre-training iterations, so the resumed run starts the self-training (teacher copy, new optimiser)
    config = preset_config("tiny", {"iterations": 4, "device": "cpu", "checkpoint_every": 2, "method": method,
                                    "bcp_pretrain_iterations": 2})
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
    assert meta["inference"] == "a"  # the authors test the student (CPS: its first branch)
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
