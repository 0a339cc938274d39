"""Every published default of the baselines pinned to its authors' code (file and line in a comment), so that
a changed default fails here. Snapshots read: yulequan/UA-MT @ 88ed29a, DeepMed-Lab-ECNU/BCP @ 7879f98,
charlesCXK/TorchSemiSeg @ 5e0c29c."""

import math

import pytest

from SemiSupSegTraining.config import TrainConfig, preset_config
from SemiSupSegTraining.methods import bcp as BCP, cps as CPS, mean_teacher as MT, method_class

DEFAULTS = TrainConfig()


def test_mean_teacher_and_ua_mt_defaults_are_ua_mts():
    # code/train_LA_meanteacher_certainty_unlabel.py:38  --consistency default=0.1
    assert DEFAULTS.consistency_weight == 0.1
    # :39 --consistency_rampup default=40.0, :171 get_current_consistency_weight(iter_num // 150) over the
    # 6000 iterations of :28: 40 steps over the whole run
    assert MT.RAMPUP_STEPS == 40 and DEFAULTS.consistency_rampup == 1.0
    assert MT.consistency_rampup(150, 6000, DEFAULTS.consistency_rampup) == pytest.approx(math.exp(-5 * (39 / 40) ** 2))
    # :169 supervised_loss = 0.5*(loss_seg+loss_seg_dice)
    assert DEFAULTS.mt_supervised_weight == 0.5
    # :36 --ema_decay default=0.99 (used throughout, :182)
    assert DEFAULTS.ema_decay == 0.99 and DEFAULTS.ema_decay_after == 0.99
    # :146 noise = torch.clamp(torch.randn_like(...) * 0.1, -0.2, 0.2)
    assert DEFAULTS.input_noise == 0.1
    # :151 T = 8
    assert DEFAULTS.mc_samples == 8
    # :173 threshold = (0.75+0.25*ramps.sigmoid_rampup(iter_num, max_iterations))*np.log(2)
    assert MT.uncertainty_threshold(0, 6000, 2) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    # code/test_LA.py tests the student (model, not ema_model)
    assert DEFAULTS.teacher_segments is False


def test_bcp_defaults_are_bcps():
    # code/LA_BCP_train.py:36 --pre_max_iteration default=2000
    assert DEFAULTS.bcp_pretrain_iterations == 2000
    # :36-37 2000 of 2000 + 15000 (--self_max_iteration default=15000) iterations
    assert DEFAULTS.bcp_pretrain == 2.0 / 17.0
    assert BCP.bcp_pretrain_iterations(preset_config("paper", {"method": "bcp", "iterations": 17000})) == 2000
    # :51 --mask_ratio default=2/3
    assert DEFAULTS.bcp_box == 2.0 / 3.0
    # :50 --u_weight default=0.5
    assert DEFAULTS.bcp_pseudo_weight == 0.5
    # :243-244 get_cut_mask(unoutput_a, nms=1): the largest connected component
    assert DEFAULTS.bcp_largest_component is True
    # :270 update_ema_variables(model, ema_model, 0.99)
    assert DEFAULTS.ema_decay == 0.99


def test_bcp_pretraining_rule_at_the_benchmark_budgets():
    # its 2000 iterations, at most half the budget, at least 2/17 of it
    assert BCP.bcp_pretrain_iterations(preset_config("demo", {"method": "bcp", "iterations": 600})) == 300
    assert BCP.bcp_pretrain_iterations(preset_config("demo", {"method": "bcp", "iterations": 6000})) == 2000
    assert BCP.bcp_pretrain_iterations(preset_config("demo", {"method": "bcp", "iterations": 600,
                                                              "bcp_pretrain_iterations": 0})) == 71   # 2/17 of 600


def test_cps_defaults_are_cps_code():
    # exp.voc/voc8.res50v3+.CPS/config.py:74  C.cps_weight = 1.5
    assert DEFAULTS.cps_weight == 1.5
    # train.py:191-194 cps_loss = (criterion(pred_l, max_r) + criterion(pred_r, max_l)) * config.cps_weight:
    # no ramp-up
    assert DEFAULTS.cps_rampup == 0.0 and CPS.rampup_length(DEFAULTS) == 0
    # train.py:74 criterion = nn.CrossEntropyLoss(...); :197, :201 loss_sup = criterion(pred_sup_l, gts)
    assert DEFAULTS.cps_supervision == "ce"
    # network.py:18-21 in evaluation forward returns branch1's prediction only
    assert DEFAULTS.cps_segments == "a" and method_class("cps")(DEFAULTS).inference_networks() == "a"


@pytest.mark.parametrize("method, authors", [("mean-teacher", True), ("ua-mt", True), ("bcp", True),
                                             ("cps", False), ("ours", False), ("supervised", False)])
def test_decoder_dropout_where_the_authors_v_net_has_it(method, authors):
    # UA-MT code/networks/vnet.py:194-196 and :224-226 (x5 and x9 dropped out, has_dropout=True in training,
    # train_LA_meanteacher_certainty_unlabel.py:89); BCP code/networks/VNet.py:182-183 and :236-237,
    # net_factory.py:9 (has_dropout=True in training). CPS's network is not a V-Net; ours and labels alone
    # keep the engine's bottleneck dropout (decoder_dropout=true gives them the placement above).
    assert method_class(method).decoder_dropout is authors
    # vnet.py:177 nn.Dropout3d(p=0.5)
    assert DEFAULTS.dropout == 0.5
    from SemiSupSegTraining.networks import VNet

    built = VNet(1, 2, 4, dropout=0.5, decoder_dropout=method_class(method).decoder_dropout)
    assert (type(built.decoder.dropout).__name__ == "Dropout3d") is authors
