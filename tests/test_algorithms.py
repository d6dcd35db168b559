"""Every registered algorithm on tiny models and hand-made batches: one step, gradients, state
round-trips, and the behaviours each paper depends on."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semisup.algorithms import (ALGORITHMS, Side, StepBatch, StepContext, build_algorithm)
from semisup.algorithms.base import frozen_batchnorm_statistics
from semisup.algorithms.freematch import freematch_fairness_loss
from semisup.algorithms.masking import sharpen
from semisup.data.modality import DataFacts
from semisup.models import Network
from semisup.models.cnn import Features

from pipeline.config import default_params

PUBLISHED = default_params()["algorithms"]   # every hyperparameter, as params.yaml gives it

NUM_CLASSES, BATCH, MU, NUM_UNLABELED, TOTAL_STEPS = 3, 4, 2, 16, 100
SELECTION = {"mask_rate", "n_selected", "n_selected_correct", "n_selected_wrong",
             "pseudo_label_accuracy"}
SSL = {"loss_sup", "loss_unsup"} | SELECTION
EXPECTED_STATS = {
    "supervised": {"loss_sup"},
    "fixmatch": SSL | {"threshold"},
    "flexmatch": SSL | {"threshold_mean", "threshold_min"},
    "dash": SSL | {"rho", "rho_hat"},
    "freematch": SSL | {"tau_global", "threshold_mean", "threshold_min", "loss_fairness"},
    "softmatch": SSL | {"mu", "var"},
    "uda": SSL | {"threshold", "tsa_threshold"},
    "pseudolabel": SSL | {"threshold", "unsup_weight"},
    "meanteacher": {"loss_sup", "loss_unsup", "unsup_weight"},
    "comatch": SSL | {"loss_contrast"},
    "simmatch": SSL | {"loss_instance"},
    "mixmatch": {"loss_sup", "loss_unsup", "unsup_weight", "mixup_lambda"},
    "remixmatch": {"loss_sup", "loss_unsup", "loss_pre_mixup", "loss_rotation", "unsup_weight",
                   "mixup_lambda"},
    "crmatch": SSL | {"threshold", "loss_feature", "loss_rotation"},
    "pimodel": {"loss_sup", "loss_unsup", "unsup_weight"},
    "vat": {"loss_sup", "loss_unsup", "loss_entropy", "unsup_weight"},
    "adamatch": SSL | {"threshold"},
    "defixmatch": SSL | {"threshold", "loss_anti", "mask_rate_labeled"},
    "fullysupervised": {"loss_sup"},
}
# (registered name, hyperparameters): every algorithm, and Dash in both variants.
CASES = [(name, {}) for name in sorted(ALGORITHMS)] + [("dash", {"variant": "usb"})]
CASE_IDS = [name + ("-" + params["variant"] if params else "") for name, params in CASES]
# Hyperparameters under which the tiny model's unlabeled samples pass the mask (and ramps are on),
# so that a missing gradient cannot hide behind an empty mask.
LENIENT = {"fixmatch": {"tau": 0.0}, "uda": {"tau": 0.0},
           "pseudolabel": {"tau": 0.0, "rampup_fraction": 0.0},
           "meanteacher": {"rampup_fraction": 0.0}, "pimodel": {"rampup_fraction": 0.0},
           "vat": {"rampup_fraction": 0.0}, "adamatch": {"tau": 0.0}, "defixmatch": {"tau": 0.0},
           "comatch": {"tau": 0.0, "smoothing_start_step": 0, "queue_batches": 1},
           "simmatch": {"tau": 0.0, "similarity_start_step": 0},
           "mixmatch": {"rampup_fraction": 0.0}, "remixmatch": {"rampup_fraction": 0.0},
           "crmatch": {"tau": 0.0}}
# The student's unlabeled logits where they are not the last mu*B rows the model produced:
# CoMatch's first strong view (its second strong view trains only its projection, contrastively);
# CRMatch's strong view (its one forward ends with the 4 B rotated images, seen by its rotation
# head only).
STUDENT_ROWS = {"comatch": slice(-2 * BATCH * MU, -BATCH * MU),
                "crmatch": slice(-4 * BATCH - BATCH * MU, -4 * BATCH)}


def tiny_network(algorithm=None) -> Network:
    """Conv -> BatchNorm -> ReLU -> pool -> linear on 2x4x4 images, with the heads `algorithm`
    declares (as the trainer adds them)."""
    backbone = Features(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), num_features=4)
    network = Network(backbone, nn.Linear(4, NUM_CLASSES))
    return network.add_heads(algorithm.heads(network.num_features)) if algorithm else network


class ScaledInputs(nn.Module):
    """features = images * s (s = 1, learnable)."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.num_features = width

    def forward(self, images):
        return images.flatten(1) * self.scale


def logits_are_inputs(num_classes: int = NUM_CLASSES) -> Network:
    """logits = images * s: hand-made 'images' are the logits themselves."""
    return Network(ScaledInputs(num_classes), nn.Identity())


class Recorder(nn.Module):
    """Wraps a network and keeps every logits it produces, with .grad retained after backward."""

    def __init__(self, network):
        super().__init__()
        self.network, self.outputs = network, []

    def forward(self, inputs, want=()):
        output = self.network(inputs, want=want)
        if output.logits.requires_grad:
            output.logits.retain_grad()
        self.outputs.append(output.logits)
        return output


def make(name, num_unlabeled=NUM_UNLABELED, num_classes=NUM_CLASSES, num_labeled=BATCH, **params):
    """The algorithm with params.yaml's hyperparameters, `params` replacing some of them."""
    facts = DataFacts(num_classes=num_classes, num_labeled=num_labeled, num_unlabeled=num_unlabeled,
                      labeled_class_counts=(1,) * num_classes)
    return build_algorithm(name, {**PUBLISHED[name], **params}, facts=facts, total_steps=TOTAL_STEPS)


def run_step(algorithm, network, batch, step, teacher=None):
    """One training step as the trainer calls it."""
    ctx = StepContext(network=network, step=step, generator=torch.Generator().manual_seed(step),
                      teacher=teacher, host_generator=torch.Generator().manual_seed(step))
    return algorithm.training_step(ctx, batch)


def evaluation(algorithm, step, ema_loss, network=None, evaluate=None):
    """What the trainer hands an algorithm after an evaluation at `step`."""
    metrics = {"ema/loss": ema_loss, "ema/error": 50.0, "raw/loss": ema_loss, "raw/error": 50.0}
    algorithm.on_evaluation(step, metrics, network or tiny_network(),
                            evaluate or (lambda probe: {"loss": ema_loss, "error": 50.0}))


def image_batch(algorithm, seed, offset=0, step=None) -> StepBatch:
    """Random 2x4x4 'images' with the views the algorithm declares (at `step`, if given)."""
    generator = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randn(n, 2, 4, 4, generator=generator)
    labels = lambda n: torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    views = algorithm.views if step is None else algorithm.views_at(step)
    batch = StepBatch(labeled=Side([images(BATCH) for _ in views.labeled], labels(BATCH),
                                   (torch.arange(BATCH) + offset) % BATCH))
    if views.unlabeled:
        batch.unlabeled = Side([images(BATCH * MU) for _ in views.unlabeled], labels(BATCH * MU),
                               (torch.arange(BATCH * MU) + offset) % NUM_UNLABELED)
    return batch


def logit_batch(weak, strong=None, labeled=None, labels=None, indices=None) -> StepBatch:
    """A batch for logits_are_inputs(): the 'images' are the logits each view will produce."""
    weak = torch.as_tensor(weak, dtype=torch.float32)
    labeled = torch.zeros(1, weak.shape[1]) if labeled is None else labeled
    strong = weak.clone() if strong is None else torch.as_tensor(strong)
    return StepBatch(
        labeled=Side([labeled], torch.zeros(len(labeled), dtype=torch.long) if labels is None
                     else labels, torch.arange(len(labeled))),
        unlabeled=Side([weak, strong], torch.zeros(len(weak), dtype=torch.long),
                       torch.arange(len(weak)) if indices is None else indices))


def first_ssl_step(algorithm) -> int:
    """Dash `usb` trains on labels only at first: feed it the end-of-warm-up evaluation."""
    step = 0
    while not algorithm.views_at(step).unlabeled and algorithm.views.unlabeled:
        step += 1
    evaluation(algorithm, step, 5.0)
    return step


def teacher_for(algorithm, network):
    if not algorithm.needs_teacher:
        return None
    teacher = copy.deepcopy(network)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
            parameter.requires_grad_(False)
    return teacher


# ---- every algorithm --------------------------------------------------------------------------
def test_every_registered_algorithm_has_documented_stats():
    assert set(EXPECTED_STATS) == set(ALGORITHMS)


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_one_step_returns_a_finite_scalar_loss_and_the_documented_stats(name, params):
    torch.manual_seed(0)
    algorithm = make(name, **params)
    model = tiny_network(algorithm)
    step = first_ssl_step(algorithm)
    output = run_step(algorithm, model, image_batch(algorithm, 0), step,
                                     teacher_for(algorithm, model))
    assert output.loss.dim() == 0 and torch.isfinite(output.loss)
    assert set(output.stats) == EXPECTED_STATS[name]
    for key, value in output.stats.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
        assert not value.requires_grad, key


LABELS_ONLY = ("supervised", "fullysupervised")


@pytest.mark.parametrize("name,params", [c for c in CASES if c[0] not in LABELS_ONLY],
                         ids=[i for i in CASE_IDS if i not in LABELS_ONLY])
def test_the_unsupervised_loss_reaches_the_students_unlabeled_logits(name, params):
    """The student's unlabeled logits (strong view; Pseudo-Label's weak view; Mean Teacher's second
    view) are the last mu*B rows the model produced (else STUDENT_ROWS says where); only
    unsupervised terms touch them."""
    torch.manual_seed(0)
    algorithm = make(name, **{**LENIENT.get(name, {}), **params})
    model = Recorder(tiny_network(algorithm))
    step = first_ssl_step(algorithm)
    teacher = teacher_for(algorithm, model.network)
    output = run_step(algorithm, model, image_batch(algorithm, 0), step, teacher)
    output.loss.backward()
    if "mask_rate" in output.stats:
        assert output.stats["mask_rate"] > 0
    grads = torch.cat([o.grad if o.grad is not None else torch.zeros_like(o) for o in model.outputs])
    unlabeled_grads = grads[STUDENT_ROWS.get(name, slice(-BATCH * MU, None))]
    assert (unlabeled_grads.abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_state_dict_round_trip_resumes_exactly(name, params):
    torch.manual_seed(0)
    # Short Dash epochs; a FlexMatch tau the tiny model reaches, so that sigma fills up.
    short = {"dash": {"warmup_epochs": 2, "warmup_steps": 2, "steps_per_epoch": 1},
             "flexmatch": {"tau": 0.4}}
    params = {**params, **short.get(name, {})}
    algorithm = make(name, **params)
    model = tiny_network(algorithm)
    teacher = teacher_for(algorithm, model)
    initial_state = make(name, **params).state_dict()
    step = first_ssl_step(algorithm)
    for _ in range(4):   # Dash official: warm-up epochs 0 and 1, then two epochs with rho
        model.zero_grad()
        run_step(algorithm, model, image_batch(algorithm, step, offset=3 * step), step,
                                teacher).loss.backward()
        sgd_step(model)
        step += 1

    buffer = io.BytesIO()
    torch.save(algorithm.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(name, **params)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    if algorithm.state_names:   # the state has moved away from its initial value
        assert any(not _equal(initial_state[k], algorithm.state_dict()[k]) for k in initial_state)

    batch = image_batch(algorithm, 99, offset=5)
    original = run_step(algorithm, copy.deepcopy(model), batch, step, teacher)
    again = run_step(resumed, copy.deepcopy(model), batch, step, teacher)
    assert torch.equal(original.loss, again.loss)
    assert all(torch.equal(original.stats[k], again.stats[k]) or
               (original.stats[k].isnan() and again.stats[k].isnan()) for k in original.stats)
    assert all(_equal(algorithm.state_dict()[k], resumed.state_dict()[k])
               for k in algorithm.state_names)


def sgd_step(model, lr=0.1):
    """Plain SGD by hand (torch.optim's first step costs seconds of imports)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= lr * parameter.grad


def _equal(a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.equal(a, b)
    return a == b


# ---- FlexMatch --------------------------------------------------------------------------------
def flexmatch_batch():
    # 10 classes. Sample 0: class 0 with q = 0.99; sample 1: class 0 with q = 0.15 (the other nine
    # share 0.85, 0.0944 each). Logits are log-probabilities.
    probs = torch.tensor([[0.99] + [0.01 / 9] * 9, [0.15] + [0.85 / 9] * 9])
    return logit_batch(torch.log(probs), labeled=torch.zeros(1, 10), indices=torch.tensor([0, 1]))


def test_flexmatch_masks_with_the_counts_before_recording_the_batch():
    algorithm, model = make("flexmatch", num_unlabeled=4, num_classes=10), logits_are_inputs()
    # Step 0: all sigma = -1 -> every threshold 0 -> both samples pass, although q = 0.15 for one.
    first = run_step(algorithm, model, flexmatch_batch(), 0)
    assert first.stats["mask_rate"] == 1.0 and first.stats["threshold_mean"] == 0.0
    # ... and only then is the confident sample recorded.
    assert algorithm.sigma.tolist() == [0, -1, -1, -1]
    # Step 1: n_0 = 1, n_unused = 3 -> beta_0 = 1/3, threshold 0.95 * (1/3) / (5/3) = 0.19:
    # q = 0.99 passes, q = 0.15 does not.
    second = run_step(algorithm, model, flexmatch_batch(), 1)
    assert second.stats["mask_rate"] == 0.5
    assert second.stats["threshold_mean"] == pytest.approx(0.019)   # 0.19 / 10 classes


def test_flexmatch_without_threshold_warmup_uses_the_largest_class_count():
    algorithm = make("flexmatch", num_unlabeled=4, num_classes=10, threshold_warmup=False)
    model = logits_are_inputs()
    run_step(algorithm, model, flexmatch_batch(), 0)
    # n_0 = 1 = max_c n_c -> beta_0 = 1 -> threshold 0.95: 0.99 passes, 0.15 does not
    second = run_step(algorithm, model, flexmatch_batch(), 1)
    assert second.stats["mask_rate"] == 0.5
    assert second.stats["threshold_mean"] == pytest.approx(0.095)


# ---- Dash -------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", ["official", "unlabeled_set"])
def test_dash_official_warmup_keeps_every_sample_and_rho_hat_is_the_mean_recorded_loss(window):
    # Epochs of 2 steps, 2 warm-up epochs (steps 0-3); 4 unlabeled samples per step; 8 unlabeled
    # and 2 labeled samples: rho_hat averages the most recent 8 - 2 = 6 losses (the official
    # code's total_train_num - labeled_num) or 8 (one unlabeled set's worth).
    algorithm = make("dash", variant="official", num_unlabeled=8, num_labeled=2, warmup_epochs=2,
                     steps_per_epoch=2, rho_hat_window=window)
    recent = 6 if window == "official" else 8
    model, generator = logits_are_inputs(), torch.Generator().manual_seed(0)
    batches = [logit_batch(0.3 * torch.randn(4, 3, generator=generator),
                           torch.randn(4, 3, generator=generator)) for _ in range(5)]
    for step in range(4):
        output = run_step(algorithm, model, batches[step], step)
        # low-confidence predictions (q < 0.6) all pass: no effective threshold in warm-up
        assert output.stats["mask_rate"] == 1.0
        assert math.isnan(output.stats["rho"])
        # unsup = 0.9 * mean_i H(softmax(w / 0.5), p_s)
        losses = -(sharpen(batches[step].unlabeled.views[0], 0.5)
                   * F.log_softmax(batches[step].unlabeled.views[1], -1)).sum(-1)
        assert output.stats["loss_unsup"] == pytest.approx(0.9 * losses.mean().item(), rel=1e-5)

    # Recorded: the last warm-up epoch (steps 2 and 3: 8 losses); the most recent count.
    def per_sample(step):
        return -(sharpen(batches[step].unlabeled.views[0], 0.5)
                 * F.log_softmax(batches[step].unlabeled.views[1], -1)).sum(-1)
    rho_hat = torch.cat([per_sample(2), per_sample(3)])[-recent:].mean()

    output = run_step(algorithm, model, batches[4], 4)   # epoch 2: floor((2-1)/9) = 0
    assert algorithm.rho_hat.item() == pytest.approx(rho_hat.item(), rel=1e-6)
    assert output.stats["rho"].item() == pytest.approx(rho_hat.item(), rel=1e-6)
    confidence = torch.softmax(batches[4].unlabeled.views[0], -1).max(-1).values
    expected_mask = (-confidence.log() < rho_hat).float()
    assert output.stats["mask_rate"].item() == pytest.approx(expected_mask.mean().item())


def test_dash_official_switches_to_one_hot_labels_at_rho_min():
    algorithm = make("dash", variant="official", num_unlabeled=2, num_labeled=1, warmup_epochs=1,
                     steps_per_epoch=1)
    model = logits_are_inputs()
    weak = torch.log(torch.tensor([[0.99, 0.005, 0.005], [0.4, 0.3, 0.3]]))
    strong = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    run_step(algorithm, model, logit_batch(weak, strong), 0)
    algorithm.rho_hat = torch.tensor(0.04)   # below rho_min: rho = rho_min, labels one-hot
    output = run_step(algorithm, model, logit_batch(weak, strong), 1)
    # only sample 0 passes (-log 0.99 = 0.01 < 0.05): unsup = 0.9 * H(one-hot 0, p_s) / 1
    expected = 0.9 * F.cross_entropy(strong[:1], torch.tensor([0]))
    assert output.stats["rho"].item() == pytest.approx(0.05)
    assert output.stats["loss_unsup"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_dash_usb_trains_supervised_only_during_warmup_and_takes_rho_hat_from_evaluation():
    algorithm = make("dash", variant="usb", warmup_steps=4, steps_per_epoch=1, rho_hat_model="ema")
    assert [bool(algorithm.views_at(step).unlabeled) for step in range(6)] == [False] * 4 + [True] * 2
    # a warm-up step sees the labeled batch only and trains on its labels alone
    warmup_batch = image_batch(algorithm, 0, step=0)
    assert warmup_batch.unlabeled is None
    network = tiny_network()
    warmup = run_step(algorithm, network, warmup_batch, 0)
    assert set(warmup.stats) == {"loss_sup"}
    assert torch.equal(warmup.loss, F.cross_entropy(network(warmup_batch.labeled.views[0]).logits,
                                                    warmup_batch.labeled.labels))
    evaluation(algorithm, 2, 9.0)
    evaluation(algorithm, 4, 0.7)    # the end of warm-up: this one counts
    evaluation(algorithm, 5, 0.1)    # later evaluations do not
    assert algorithm.rho_hat == 0.7
    model = logits_are_inputs()
    weak = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.34, 0.33, 0.33]]))
    output = run_step(algorithm, model, logit_batch(weak), 4)
    # rho = C * rho_hat = 0.70007. Soft targets sharpen(p_w, 0.5): H(pseudo, p_w) is about 0.39
    # for the confident sample (kept) and about 1.10 for the flat one (dropped).
    assert output.stats["rho"].item() == pytest.approx(0.70007)
    assert output.stats["mask_rate"] == 0.5
    # after 10 epochs (10 steps here) rho = C * rho_hat / gamma
    output = run_step(algorithm, model, logit_batch(weak), 14)
    assert output.stats["rho"].item() == pytest.approx(0.70007 / 1.27)


def test_dash_usb_rho_hat_of_the_initial_weights_with_the_trained_batchnorm_statistics():
    # semilearn 0.3.2 as it runs: the EMA its warm-up creates is never updated, so rho_hat is the
    # evaluation loss of the initial weights under the warmed-up BatchNorm statistics.
    torch.manual_seed(0)
    algorithm = make("dash", variant="usb", warmup_steps=4, rho_hat_model="initial_weights")
    model = tiny_network()
    initial = copy.deepcopy(model)
    algorithm.setup(model)
    with torch.no_grad():                     # "training": new weights, new running statistics
        for parameter in model.parameters():
            parameter.add_(1.0)
        model.backbone[1].running_mean.fill_(3.0)
    seen = []

    def evaluate(probe):
        seen.append(probe)
        return {"loss": 1.25, "error": 40.0}
    evaluation(algorithm, 4, ema_loss=9.0, network=model, evaluate=evaluate)
    assert algorithm.rho_hat == 1.25          # the probe's loss, not the EMA model's 9.0
    probe = seen[0]
    assert all(torch.equal(p, q) for p, q in zip(probe.parameters(), initial.parameters(), strict=True))
    assert torch.equal(probe.backbone[1].running_mean, torch.full((4,), 3.0))
    assert not torch.equal(next(model.parameters()), next(initial.parameters()))  # model untouched
    # the initial weights are state: a checkpoint carries them
    resumed = make("dash", variant="usb", warmup_steps=4, rho_hat_model="initial_weights")
    resumed.load_state_dict(copy.deepcopy(algorithm.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(resumed.initial_parameters,
                                                 algorithm.initial_parameters, strict=True))


def test_dash_official_refuses_a_window_with_no_losses():
    with pytest.raises(ValueError, match="unlabeled_set"):
        make("dash", variant="official", num_unlabeled=4, num_labeled=4)


def test_dash_usb_refuses_to_guess_rho_hat_without_an_evaluation():
    algorithm = make("dash", variant="usb", warmup_steps=4)
    with pytest.raises(RuntimeError, match="no evaluation"):
        run_step(algorithm, logits_are_inputs(), logit_batch(torch.zeros(2, 3)), 4)


# ---- FreeMatch, SoftMatch, UDA ----------------------------------------------------------------
def test_freematch_fairness_loss_by_hand():
    # p_model = label_hist = uniform -> target [0.5, 0.5]. Strong probs [[0.8, 0.2], [0.4, 0.6]]
    # both selected: hist_s = [0.5, 0.5], mean p_s = [0.6, 0.4] -> modulated [0.6, 0.4]
    # loss = 0.5 ln 0.6 + 0.5 ln 0.4 = -0.713558
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6]])).requires_grad_()
    half = torch.full((2,), 0.5)
    loss = freematch_fairness_loss(logits, torch.ones(2), half, half)
    assert loss.item() == pytest.approx(-0.713558, abs=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    # nothing selected: no loss, and a finite (zero) gradient
    logits.grad = None
    empty = freematch_fairness_loss(logits, torch.zeros(2), half, half)
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_freematch_folds_the_batch_into_its_statistics_before_masking():
    algorithm = make("freematch", num_classes=2, ema_momentum=0.5)
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    output = run_step(algorithm, logits_are_inputs(), logit_batch(torch.log(probs)), 0)
    # as worked out in test_masking: tau_g = 0.591667, thresholds [0.591667, 0.535317] -> 2 of 3
    assert output.stats["tau_global"].item() == pytest.approx(0.591667, abs=1e-5)
    assert output.stats["mask_rate"].item() == pytest.approx(2 / 3)


def test_softmatch_alignment_estimate_starts_at_the_first_batch_mean():
    algorithm = make("softmatch", num_classes=2)
    probs = torch.tensor([[0.6, 0.4], [0.2, 0.8]])
    output = run_step(algorithm, logits_are_inputs(), logit_batch(torch.log(probs)), 0)
    assert torch.allclose(algorithm.alignment.p_model, torch.tensor([0.4, 0.6]))
    # aligned q = [0.692308, 0.727273] (test_masking); mu = 0.999 * 0.5 + 0.001 * 0.709790
    assert output.stats["mu"].item() == pytest.approx(0.999 * 0.5 + 0.001 * 0.709790, abs=1e-6)
    # second batch: an EMA from there on
    run_step(algorithm, logits_are_inputs(), logit_batch(torch.log(probs.flip(1))), 1)
    assert torch.allclose(algorithm.alignment.p_model, 0.999 * torch.tensor([0.4, 0.6])
                          + 0.001 * torch.tensor([0.6, 0.4]))


def test_fixmatch_loss_by_hand():
    # labeled: logits 0 -> CE = ln 3 = 1.098612. Unlabeled weak p = [0.96, 0.02, 0.02] (q >= 0.95:
    # pseudo-label 0) and [0.5, 0.3, 0.2] (masked out); strong p of sample 0 = [0.5, 0.25, 0.25]:
    # loss_unsup = (-ln 0.5 + 0) / 2 = 0.346574 (the mean over all mu*B, masked ones included);
    # loss = 1.098612 + 1.0 * 0.346574 = 1.445186.
    weak = torch.log(torch.tensor([[0.96, 0.02, 0.02], [0.5, 0.3, 0.2]]))
    strong = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    batch = logit_batch(weak, strong, labeled=torch.zeros(1, 3), labels=torch.tensor([0]))
    batch.unlabeled.labels = torch.tensor([0, 2])
    output = run_step(make("fixmatch", num_classes=3), logits_are_inputs(), batch, 0)
    assert output.stats["loss_sup"].item() == pytest.approx(1.098612, abs=1e-6)
    assert output.stats["loss_unsup"].item() == pytest.approx(0.346574, abs=1e-6)
    assert output.loss.item() == pytest.approx(1.445186, abs=1e-6)
    assert output.stats["mask_rate"].item() == 0.5
    assert output.stats["n_selected_correct"].item() == 1.0


@pytest.mark.parametrize("sharpen_targets", [True, False])
def test_uda_targets_are_sharpened_as_the_paper_or_plain_as_semilearn_runs(sharpen_targets):
    algorithm = make("uda", num_classes=3, sharpen_targets=sharpen_targets)
    weak = torch.log(torch.tensor([[0.85, 0.1, 0.05], [0.5, 0.3, 0.2]]))
    strong = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    output = run_step(algorithm, logits_are_inputs(), logit_batch(weak, strong), 0)
    # only sample 0 has q >= 0.8; target softmax(logits_w / 0.4) (paper) or p_w (semilearn)
    target = torch.softmax(weak[0] / 0.4, -1) if sharpen_targets else torch.softmax(weak[0], -1)
    expected = -(target * F.log_softmax(strong[0], -1)).sum() / 2
    assert output.stats["loss_unsup"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("tsa_rule, kept", [("true_class", [True, False]),
                                            ("max_probability", [False, False])])
def test_uda_tsa_compares_the_true_class_or_the_largest_probability(tsa_rule, kept):
    # linear TSA at step 50 of 100 with 3 classes: eta = 0.5 * (2/3) + 1/3 = 2/3.
    # Sample 0: p = [0.9, 0.05, 0.05], label 1 -> true-class 0.05 (kept), max 0.9 (dropped).
    # Sample 1: p = [0.1, 0.8, 0.1], label 1 -> 0.8 either way (dropped).
    algorithm = make("uda", num_classes=3, tsa_schedule="linear", tsa_rule=tsa_rule)
    labeled = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]))
    labels = torch.tensor([1, 1])
    batch = logit_batch(torch.zeros(2, 3), labeled=labeled, labels=labels)
    output = run_step(algorithm, logits_are_inputs(), batch, 50)
    per_sample = F.cross_entropy(labeled, labels, reduction="none")
    expected = (per_sample * torch.tensor(kept, dtype=torch.float32)).mean()
    assert output.stats["tsa_threshold"].item() == pytest.approx(2 / 3)
    assert output.stats["loss_sup"].item() == pytest.approx(expected.item(), rel=1e-6)


# ---- Mean Teacher, Pseudo-Label ---------------------------------------------------------------
def test_mean_teacher_compares_the_student_with_the_teacher_not_with_itself():
    torch.manual_seed(0)
    algorithm, student = make("meanteacher", rampup_fraction=0.0), tiny_network()
    batch = image_batch(algorithm, 0)
    batch.unlabeled.views[1] = batch.unlabeled.views[0].clone()   # same view: only the weights differ
    # identical weights, identical views: nothing to learn
    same = run_step(algorithm, student, batch, 0, teacher=copy.deepcopy(student))
    assert same.stats["loss_unsup"] == 0.0
    # different weights: a non-zero loss, whose gradient reaches the student only
    teacher = teacher_for(algorithm, student)
    output = run_step(algorithm, student, batch, 0, teacher=teacher)
    assert output.stats["loss_unsup"] > 0
    output.loss.backward()
    assert student.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_mean_teacher_separate_batchnorm_batches_are_semilearns():
    """batchnorm separate: the labeled images alone update the running statistics, and the
    student's unlabeled logits are those of its views normalised alone."""
    torch.manual_seed(0)
    algorithm, student = make("meanteacher", batchnorm="separate", rampup_fraction=0.0), tiny_network()
    batch = image_batch(algorithm, 0)
    labeled_only, alone = copy.deepcopy(student), copy.deepcopy(student)
    labeled_only(batch.labeled.views[0])
    recorder = Recorder(student)
    run_step(algorithm, recorder, batch, 0, teacher=teacher_for(algorithm, student))
    bn, expected = student.backbone[1], labeled_only.backbone[1]
    assert torch.equal(bn.running_mean, expected.running_mean) and bn.num_batches_tracked.item() == 1
    with frozen_batchnorm_statistics(alone):
        assert torch.allclose(recorder.outputs[-1], alone(batch.unlabeled.views[1]).logits)
    # the same weights and views: only the BatchNorm batches differ
    joint = make("meanteacher", batchnorm="joint", rampup_fraction=0.0)
    network, teacher = tiny_network(), teacher_for(joint, student)
    losses = [run_step(each, copy.deepcopy(network), batch, 0, copy.deepcopy(teacher)).loss
              for each in (joint, algorithm)]
    assert not torch.equal(*losses)


def test_pseudo_label_leaves_batchnorm_statistics_to_the_labeled_pass():
    torch.manual_seed(0)
    algorithm, model = make("pseudolabel"), tiny_network()
    batch = image_batch(algorithm, 0)
    labeled_only = copy.deepcopy(model)
    labeled_only(batch.labeled.views[0])
    run_step(algorithm, model, batch, 50)
    bn, expected = model.backbone[1], labeled_only.backbone[1]
    assert torch.equal(bn.running_mean, expected.running_mean)
    assert torch.equal(bn.running_var, expected.running_var)
    assert bn.num_batches_tracked.item() == 1


def test_frozen_batchnorm_statistics_still_normalises_with_the_batch():
    model = tiny_network()
    images = torch.randn(8, 2, 4, 4)
    before = copy.deepcopy(model.state_dict())
    with frozen_batchnorm_statistics(model):
        frozen = model(images).logits
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.allclose(frozen, copy.deepcopy(model)(images).logits)   # same output as a normal pass
    assert model.backbone[1].track_running_stats


def test_pseudo_label_weight_ramps_up_over_40_percent_of_training():
    algorithm, model = make("pseudolabel"), tiny_network()
    weights = [run_step(algorithm, model, image_batch(algorithm, 0), step)
               .stats["unsup_weight"].item() for step in (0, 20, 40, 90)]
    assert weights == pytest.approx([0.0, 0.5, 1.0, 1.0])   # clip(t / (0.4 * 100))
