"""Masking, pseudo-labelling and schedules on small hand-made tensors; answers worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from semisup.algorithms.masking import (class_counts, class_threshold_mask,
                                        confidence_and_pseudo_labels,
                                        dash_mask_official, dash_mask_usb, dash_rho_official,
                                        dash_rho_usb, distribution_alignment,
                                        fixed_threshold_mask, flexmatch_record,
                                        flexmatch_thresholds, freematch_thresholds,
                                        freematch_update, linear_rampup, sharpen,
                                        softmatch_update, softmatch_weights, tsa_threshold)


def close(actual, expected, tol=1e-5):
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float32),
                          torch.as_tensor(expected, dtype=torch.float32), atol=tol, rtol=0)


# ---- shared -----------------------------------------------------------------------------------
def test_confidence_is_the_max_probability_and_pseudo_label_its_class():
    confidence, pseudo_labels = confidence_and_pseudo_labels(
        torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]]))
    assert close(confidence, [0.7, 0.5])
    assert pseudo_labels.tolist() == [1, 0]


def test_sharpening_divides_logits_by_the_temperature():
    # logits [0, ln 2] at T = 0.5 -> softmax([0, 2 ln 2]) = [1, 4] / 5
    assert close(sharpen(torch.tensor([[0.0, math.log(2.0)]]), 0.5), [[0.2, 0.8]])
    # T = 1 is the plain softmax
    assert close(sharpen(torch.tensor([[0.0, math.log(3.0)]]), 1.0), [[0.25, 0.75]])


def test_class_counts_is_a_bincount():
    # labels 2, 0, 2, 2 in 4 bins -> [1, 0, 3, 0]
    assert class_counts(torch.tensor([2, 0, 2, 2]), 4).tolist() == [1, 0, 3, 0]
    assert class_counts(torch.tensor([], dtype=torch.long), 2).tolist() == [0, 0]


def test_fixed_threshold_keeps_confidences_at_or_above_tau():
    mask = fixed_threshold_mask(torch.tensor([0.96, 0.95, 0.5]), 0.95)
    assert mask.tolist() == [1.0, 1.0, 0.0]
    assert mask.dtype == torch.float32


def test_class_threshold_mask_uses_the_threshold_of_the_pseudo_label():
    # q = 0.5 for both; class 0 needs 0.4 (pass), class 1 needs 0.6 (fail)
    mask = class_threshold_mask(torch.tensor([0.5, 0.5]), torch.tensor([0, 1]),
                                torch.tensor([0.4, 0.6]))
    assert mask.tolist() == [1.0, 0.0]


def test_linear_rampup_reaches_one_at_the_given_fraction_of_training():
    # clip(t / (0.4 * 1000)): 0 -> 0, 200 -> 0.5, 400 -> 1, later stays 1
    assert [linear_rampup(t, 1000, 0.4) for t in (0, 200, 400, 999)] == [0.0, 0.5, 1.0, 1.0]
    assert linear_rampup(0, 1000, 0.0) == 1.0   # no ramp


# ---- FlexMatch --------------------------------------------------------------------------------
def test_flexmatch_thresholds_with_warmup_normalise_by_the_unused_count():
    # sigma: class 0 twice, class 1 once, three never confident (-1). n = [2, 1, 0], n_unused = 3.
    # warm-up: beta = n / max(2, 3) = [2/3, 1/3, 0]; M(x) = x / (2 - x) = [0.5, 0.2, 0]
    # thresholds = 0.95 * M = [0.475, 0.19, 0]
    sigma = torch.tensor([0, 0, 1, -1, -1, -1])
    assert close(flexmatch_thresholds(sigma, 3, 0.95, threshold_warmup=True), [0.475, 0.19, 0.0])


def test_flexmatch_thresholds_without_warmup_normalise_by_the_largest_class():
    # beta = n / max_c n_c = [1, 1/2, 0]; M = [1, (1/2)/(3/2) = 1/3, 0]; * 0.95
    sigma = torch.tensor([0, 0, 1, -1, -1, -1])
    assert close(flexmatch_thresholds(sigma, 3, 0.95, threshold_warmup=False),
                 [0.95, 0.95 / 3, 0.0])


def test_flexmatch_thresholds_start_at_zero_so_every_sample_passes():
    sigma = torch.full((5,), -1)
    for warmup in (True, False):
        assert flexmatch_thresholds(sigma, 4, 0.95, threshold_warmup=warmup).tolist() == [0.0] * 4


def test_flexmatch_warmup_normaliser_is_the_largest_class_once_few_are_unused():
    # n = [3, 1], n_unused = 1: max(3, 1) = 3 either way -> beta = [1, 1/3], M = [1, 0.2]
    sigma = torch.tensor([0, 0, 0, 1, -1])
    for warmup in (True, False):
        assert close(flexmatch_thresholds(sigma, 2, 0.9, threshold_warmup=warmup), [0.9, 0.18])


def test_flexmatch_record_sets_confident_samples_and_keeps_the_others():
    sigma = torch.tensor([-1, -1, 2, -1])
    # sample 2: q = 0.5 < 0.95 keeps its old class 2; sample 0: q = 0.97 becomes class 1
    flexmatch_record(sigma, torch.tensor([2, 0]), torch.tensor([0.5, 0.97]), torch.tensor([1, 1]), 0.95)
    assert sigma.tolist() == [1, -1, 2, -1]



def test_flexmatch_record_keeps_a_confident_occurrence_when_a_later_one_is_not():
    # sample 1 appears twice (an epoch boundary inside the batch): confident class 2, then not
    sigma = torch.tensor([-1, 0, -1])
    flexmatch_record(sigma, torch.tensor([1, 2, 1]), torch.tensor([0.99, 0.2, 0.3]),
                     torch.tensor([2, 1, 0]), 0.95)
    assert sigma.tolist() == [-1, 2, -1]


def test_flexmatch_record_takes_a_confident_occurrence_after_a_non_confident_one():
    sigma = torch.tensor([-1, 0, -1])
    flexmatch_record(sigma, torch.tensor([1, 2, 1]), torch.tensor([0.3, 0.2, 0.99]),
                     torch.tensor([0, 1, 2]), 0.95)
    assert sigma.tolist() == [-1, 2, -1]


def test_flexmatch_record_of_two_confident_occurrences_is_the_last_in_batch_order():
    sigma = torch.tensor([-1, -1])
    flexmatch_record(sigma, torch.tensor([0, 1, 0, 0]), torch.tensor([0.97, 0.1, 0.99, 0.5]),
                     torch.tensor([1, 0, 2, 0]), 0.95)
    assert sigma.tolist() == [2, -1]


def test_flexmatch_record_with_repeated_indices_is_deterministic_in_deterministic_mode():
    # torch.use_deterministic_algorithms checks every scatter for a deterministic path (CUDA too)
    generator = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 8, (64,), generator=generator)
    confidence = torch.rand(64, generator=generator)
    labels = torch.randint(0, 5, (64,), generator=generator)
    expected = torch.full((8,), -1)
    for index, q, label in zip(indices.tolist(), confidence.tolist(), labels.tolist(), strict=True):
        if q >= 0.5:            # the sequential meaning: each confident view overwrites
            expected[index] = label
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        sigma = torch.full((8,), -1)
        flexmatch_record(sigma, indices, confidence, labels, 0.5)
    finally:
        torch.use_deterministic_algorithms(was)
    assert sigma.tolist() == expected.tolist()

# ---- Dash -------------------------------------------------------------------------------------
def test_dash_official_rho_schedule_by_epoch():
    def rho(epoch):
        return dash_rho_official(epoch, 2.0, gamma=1.27, rho_min=0.05, warmup_epochs=10)
    # warm-up epochs 0..9: no threshold
    assert rho(0) == math.inf and rho(9) == math.inf
    # epochs 10..18: floor((t-1)/9) = 1 -> 2 / 1.27 = 1.574803
    assert rho(10) == pytest.approx(1.574803, abs=1e-6)
    assert rho(18) == pytest.approx(1.574803, abs=1e-6)
    # epoch 19: floor(18/9) = 2 -> 2 / 1.6129 = 1.240002;  epoch 28: 3 -> 2 / 2.048383 = 0.976380
    assert rho(19) == pytest.approx(1.240002, abs=1e-6)
    assert rho(28) == pytest.approx(0.976380, abs=1e-6)
    # epoch 1000: 2 * 1.27^-111 ~ 6e-12 -> clipped at rho_min
    assert rho(1000) == 0.05


def test_dash_official_rho_with_a_short_warmup_and_a_tensor_rho_hat():
    # warm-up of 1 epoch: epoch 1 uses floor(0/9) = 0 -> rho_hat itself; a tensor stays a tensor
    rho = dash_rho_official(1, torch.tensor(0.8), gamma=1.27, rho_min=0.05, warmup_epochs=1)
    assert isinstance(rho, torch.Tensor) and close(rho, 0.8)
    rho = dash_rho_official(10, torch.tensor(0.06), gamma=1.27, rho_min=0.05, warmup_epochs=1)
    assert close(rho, 0.05)   # 0.06 / 1.27 = 0.0472 < rho_min


def test_dash_usb_rho_schedule_by_step():
    def rho(step, steps_per_epoch=1024):
        return dash_rho_usb(step, 2.0, gamma=1.27, C=1.0001, rho_min=0.05, warmup_steps=2048,
                            steps_per_epoch=steps_per_epoch)
    # first SSL step (k = 0): C * rho_hat = 2.0002; unchanged for 10 epochs of 1024 steps
    assert rho(2048) == pytest.approx(2.0002)
    assert rho(2048 + 10239) == pytest.approx(2.0002)
    # k = 1: 2.0002 / 1.27 = 1.574961;  k = 2: 2.0002 / 1.6129 = 1.240126
    assert rho(2048 + 10240) == pytest.approx(1.574961, abs=1e-6)
    assert rho(2048 + 20480) == pytest.approx(1.240126, abs=1e-6)
    assert rho(2048 + 10240 * 100) == 0.05
    # short epochs of 10 steps: the first decay comes after 100 SSL steps
    assert rho(2048 + 99, steps_per_epoch=10) == pytest.approx(2.0002)
    assert rho(2048 + 100, steps_per_epoch=10) == pytest.approx(1.574961, abs=1e-6)


def test_dash_official_keeps_samples_whose_negative_log_confidence_is_below_rho():
    # -log q = [0.1054, 0.6931, 0.0101]
    confidence = torch.tensor([0.9, 0.5, 0.99])
    assert dash_mask_official(confidence, 0.1).tolist() == [0.0, 0.0, 1.0]
    assert dash_mask_official(confidence, 0.7).tolist() == [1.0, 1.0, 1.0]
    assert dash_mask_official(confidence, math.inf).tolist() == [1.0, 1.0, 1.0]
    assert dash_mask_official(confidence, torch.tensor(0.2)).tolist() == [1.0, 0.0, 1.0]


def test_dash_usb_keeps_samples_whose_weak_loss_is_at_most_rho():
    logits_w = torch.log(torch.tensor([[0.8, 0.2], [0.5, 0.5]]))
    # hard targets: H = -log p_w[yhat] = [0.2231, 0.6931]
    assert dash_mask_usb(logits_w, torch.tensor([0, 0]), 0.25).tolist() == [1.0, 0.0]
    # soft targets sharpen([0.8, 0.2], T=0.5) = [0.64, 0.04] / 0.68 = [0.941176, 0.058824]
    # H = 0.941176 * 0.223144 + 0.058824 * 1.609438 = 0.304691 (second row: ln 2 = 0.6931)
    soft = sharpen(logits_w, 0.5)
    assert dash_mask_usb(logits_w, soft, 0.30).tolist() == [0.0, 0.0]
    assert dash_mask_usb(logits_w, soft, 0.31).tolist() == [1.0, 0.0]


# ---- FreeMatch --------------------------------------------------------------------------------
def test_freematch_thresholds_after_one_ema_update():
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    # q = [0.8, 0.7, 0.55], mean 0.683333; yhat = [0, 1, 0]; mean probs = [0.55, 0.45]
    # momentum 0.5 from the initial 1/C = 0.5:
    #   tau_g = 0.5 * 0.5 + 0.5 * 0.683333 = 0.591667
    #   p_model = 0.5 * [0.5, 0.5] + 0.5 * [0.55, 0.45] = [0.525, 0.475]
    #   label_hist = 0.5 * [0.5, 0.5] + 0.5 * [2/3, 1/3] = [0.583333, 0.416667]
    start = torch.tensor(0.5), torch.full((2,), 0.5), torch.full((2,), 0.5)
    tau_global, p_model, label_hist = freematch_update(*start, probs, momentum=0.5)
    assert close(tau_global, 0.591667)
    assert close(p_model, [0.525, 0.475])
    assert close(label_hist, [0.583333, 0.416667])
    # local thresholds tau_g * p_model / max p_model = 0.591667 * [1, 0.904762] = [0.591667, 0.535317]
    thresholds = freematch_thresholds(tau_global, p_model)
    assert close(thresholds, [0.591667, 0.535317])
    # sample 0: 0.8 >= 0.5917; sample 1 (class 1): 0.7 >= 0.5353; sample 2: 0.55 < 0.5917
    confidence, pseudo_labels = confidence_and_pseudo_labels(probs)
    assert class_threshold_mask(confidence, pseudo_labels, thresholds).tolist() == [1.0, 1.0, 0.0]


def test_freematch_update_with_the_published_momentum_moves_slowly():
    # tau_g = 0.999 * 0.5 + 0.001 * 0.683333 = 0.500183
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    start = torch.tensor(0.5), torch.full((2,), 0.5), torch.full((2,), 0.5)
    tau_global, _, _ = freematch_update(*start, probs, momentum=0.999)
    assert close(tau_global, 0.500183, tol=1e-6)


# ---- SoftMatch --------------------------------------------------------------------------------
def test_softmatch_weights_are_one_above_the_mean_and_gaussian_below():
    # mu = 0.5, var = 0.04, n_sigma = 2: w = exp(-d^2 / (2 * 0.04 / 4)) = exp(-d^2 / 0.02)
    # q = 0.7 and 0.5: d = 0 -> 1;  q = 0.4: d^2 = 0.01 -> exp(-0.5);  q = 0.3: exp(-2)
    weights = softmatch_weights(torch.tensor([0.7, 0.5, 0.4, 0.3]), torch.tensor(0.5),
                                torch.tensor(0.04), n_sigma=2)
    assert close(weights, [1.0, 1.0, 0.606531, 0.135335])


def test_softmatch_update_uses_the_unbiased_variance():
    # q = [0.4, 0.6, 0.8]: mean 0.6, unbiased var (0.04 + 0 + 0.04) / 2 = 0.04
    # momentum 0.5: mu = 0.5 * 0.25 + 0.5 * 0.6 = 0.425; var = 0.5 * 1 + 0.5 * 0.04 = 0.52
    mu, var = softmatch_update(torch.tensor(0.25), torch.tensor(1.0),
                               torch.tensor([0.4, 0.6, 0.8]), momentum=0.5)
    assert close(mu, 0.425) and close(var, 0.52)


def test_distribution_alignment_to_uniform():
    # p_model = [0.4, 0.6], target [0.5, 0.5]: scale by [1.25, 0.8333] and renormalise
    # row [0.6, 0.4] -> [0.75, 0.3333] / 1.08333 = [0.692308, 0.307692]
    # row [0.2, 0.8] -> [0.25, 0.6667] / 0.91667 = [0.272727, 0.727273]
    aligned = distribution_alignment(torch.tensor([[0.6, 0.4], [0.2, 0.8]]),
                                     torch.tensor([0.4, 0.6]), torch.tensor([0.5, 0.5]))
    assert close(aligned, [[0.692308, 0.307692], [0.272727, 0.727273]])


# ---- UDA --------------------------------------------------------------------------------------
def test_tsa_thresholds():
    # eta = alpha (1 - 1/C) + 1/C with C = 10
    assert tsa_threshold("none", 0.3, 10) == 1.0
    assert tsa_threshold("linear", 0.5, 10) == pytest.approx(0.55)          # 0.5 * 0.9 + 0.1
    assert tsa_threshold("exp", 1.0, 10) == pytest.approx(1.0)              # exp(0) = 1
    assert tsa_threshold("exp", 0.0, 10) == pytest.approx(math.exp(-5) * 0.9 + 0.1)
    assert tsa_threshold("log", 0.0, 10) == pytest.approx(0.1)              # 1 - exp(0) = 0
