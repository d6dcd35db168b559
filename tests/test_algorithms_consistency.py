"""Pi-model, VAT, AdaMatch, DeFixMatch and the fully supervised baseline: their losses and masks
on hand-made tensors, where gradients flow and where they must not, BatchNorm statistics, the
random probe's stream, and a short fit on the digits. (Every algorithm's one-step, gradient,
state round-trip and kill-and-resume tests are in test_algorithms.py and test_resume.py.)"""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm
from semisup.algorithms.adamatch import relative_threshold
from semisup.algorithms.vat import entropy_with_logits, kl_with_logits, l2_normalize
from semisup.data.image import image_train_data
from semisup.data.inputs import TokenBatch
from semisup.data.splits import make_split
from semisup.models import build_network
from semisup.train import Trainer

from pipeline.config import default_params, default_train_options
from pipeline.runs.train import image_augment, train_config
from test_algorithms import (Recorder, image_batch, logit_batch, logits_are_inputs, make, run_step,
                             tiny_network)

log = torch.log


def step_with_generator(algorithm, network, batch, step, seed):
    ctx = StepContext(network=network, step=step, generator=torch.Generator().manual_seed(seed))
    return algorithm.training_step(ctx, batch)


def labeled_only_statistics(network, batch):
    """The BatchNorm running statistics after a forward pass of the labeled batch alone."""
    alone = copy.deepcopy(network)
    alone(batch.labeled.views[0])
    return alone.backbone[1]


# ---- Pi-model ---------------------------------------------------------------------------------
def test_pimodel_loss_by_hand():
    # Labeled logits 0: CE = ln 3 = 1.098612. Sample 0: target p = [0.5, 0.25, 0.25], student
    # p = [0.25, 0.5, 0.25]: MSE = (0.0625 + 0.0625 + 0) / 3 = 0.041667; sample 1: the same
    # prediction twice, 0. loss_unsup = 0.020833. Step 20 of 100: ramp 20 / 40 = 0.5, weight
    # 10 * 0.5 = 5; loss = 1.098612 + 5 * 0.020833 = 1.202779.
    target = log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]))
    student = log(torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]]))
    output = run_step(make("pimodel"), logits_are_inputs(), logit_batch(target, student), 20)
    assert output.stats["loss_unsup"].item() == pytest.approx(0.020833, abs=1e-6)
    assert output.stats["unsup_weight"].item() == 5.0
    assert output.loss.item() == pytest.approx(1.202779, abs=1e-6)


def test_pimodel_weight_ramps_up_over_40_percent_of_training():
    algorithm, model = make("pimodel"), tiny_network()
    weights = [run_step(algorithm, model, image_batch(algorithm, 0), step).stats["unsup_weight"].item()
               for step in (0, 20, 40, 90)]
    assert weights == pytest.approx([0.0, 5.0, 10.0, 10.0])   # 10 clip(t / (0.4 * 100))


def test_pimodel_runs_three_passes_and_trains_the_second_view_towards_the_first():
    algorithm, model = make("pimodel", rampup_fraction=0.0), Recorder(logits_are_inputs())
    batch = logit_batch(torch.randn(4, 3), torch.randn(4, 3))
    run_step(algorithm, model, batch, 0).loss.backward()
    _, target, student = model.outputs   # three separate forward passes
    assert [len(o) for o in model.outputs] == [1, 4, 4]
    assert target.grad is None                 # the target is detached
    assert (student.grad.abs().sum(dim=1) > 0).all()


def test_pimodel_leaves_batchnorm_statistics_to_the_labeled_pass():
    torch.manual_seed(0)
    algorithm, model = make("pimodel"), tiny_network()
    batch = image_batch(algorithm, 0)
    expected = labeled_only_statistics(model, batch)
    run_step(algorithm, model, batch, 50)
    assert torch.equal(model.backbone[1].running_mean, expected.running_mean)
    assert torch.equal(model.backbone[1].running_var, expected.running_var)


# ---- VAT --------------------------------------------------------------------------------------
def test_vat_divergence_entropy_and_normalisation_by_hand():
    # KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.143841
    q, p = log(torch.tensor([[0.5, 0.5]])), log(torch.tensor([[0.25, 0.75]]))
    assert kl_with_logits(q, p).item() == pytest.approx(0.143841, abs=1e-6)
    assert kl_with_logits(q, q).item() == pytest.approx(0.0, abs=1e-7)
    assert entropy_with_logits(q).item() == pytest.approx(0.693147, abs=1e-6)   # ln 2
    # per sample: [3, 4] / 5; a zero row stays zero (the 1e-16 guard)
    normalised = l2_normalize(torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]]]))
    assert torch.allclose(normalised, torch.tensor([[[0.6, 0.8]], [[0.0, 0.0]]]))


@pytest.mark.parametrize("precision, xi", [("float64", 1e-6), ("float32", 1e-2)])
def test_vat_loss_by_hand(precision, xi):
    # logits = inputs, two classes, unlabeled logits [0, 0]: the divergence's gradient at the
    # probe r is [s, -s] / B with s = sigmoid(r1 - r2) - 1/2, so one power iteration from any
    # probe gives d_adv = +-[1, -1] / sqrt 2. eps 1: p(x + r_adv) = softmax([0.707107,
    # -0.707107]) = [0.804430, 0.195570] (or reversed), KL = 0.5 ln(0.5 / 0.804430)
    # + 0.5 ln(0.5 / 0.195570) = 0.231581 either way. Entropy ln 2 = 0.693147 (weight 0.06);
    # labeled logits [2, 0] with label 0: CE = ln(1 + e^-2) = 0.126928. Step 40 of 100: weight 1.
    # loss = 0.126928 + 0.231581 + 0.06 * 0.693147 = 0.400098. (In float32 with xi = 1e-6, s is
    # a few float32 steps of 1/2 and the direction comes out a few degrees off: 0.2311.)
    algorithm = make("vat", eps=1.0, xi=xi, power_iteration_precision=precision)
    batch = StepBatch(Side([torch.tensor([[2.0, 0.0]])], torch.tensor([0]), torch.arange(1)),
                      Side([torch.zeros(3, 2)], torch.zeros(3, dtype=torch.long), torch.arange(3)))
    output = run_step(algorithm, logits_are_inputs(2), batch, 40)
    assert output.stats["loss_unsup"].item() == pytest.approx(0.231581, abs=1e-5)
    assert output.stats["loss_entropy"].item() == pytest.approx(0.693147, abs=1e-6)
    assert output.loss.item() == pytest.approx(0.400098, abs=1e-5)


def test_vat_trains_the_perturbed_pass_towards_a_detached_target_and_makes_no_parameter_gradient():
    torch.manual_seed(0)
    algorithm = make("vat", rampup_fraction=0.0, lambda_entropy=0.0)
    model = Recorder(tiny_network())
    output = run_step(algorithm, model, image_batch(algorithm, 0), 0)
    # the power iteration differentiates with respect to its probe only
    assert all(parameter.grad is None for parameter in model.parameters())
    output.loss.backward()
    _, clean, _, adversarial = model.outputs   # labeled, clean, probed, adversarial passes
    assert (clean.grad == 0).all()  # the target p(x): no gradient without the entropy term
    assert (adversarial.grad.abs().sum(dim=1) > 0).all()


def test_vat_entropy_term_carries_the_gradient_of_the_clean_pass():
    torch.manual_seed(0)
    algorithm, model = make("vat"), Recorder(tiny_network())
    run_step(algorithm, model, image_batch(algorithm, 0), 0).loss.backward()   # ramp 0: entropy only
    assert model.outputs[1].grad.abs().sum() > 0
    assert model.outputs[3].grad.abs().sum() == 0


def test_vat_leaves_batchnorm_statistics_to_the_labeled_pass():
    torch.manual_seed(0)
    algorithm, model = make("vat"), tiny_network()
    batch = image_batch(algorithm, 0)
    expected = labeled_only_statistics(model, batch)
    run_step(algorithm, model, batch, 50)
    assert torch.equal(model.backbone[1].running_mean, expected.running_mean)
    assert torch.equal(model.backbone[1].running_var, expected.running_var)
    assert model.backbone[1].num_batches_tracked.item() == 1


def test_vat_draws_its_probe_from_the_step_generator_only():
    torch.manual_seed(0)
    algorithm, model = make("vat", rampup_fraction=0.0), tiny_network()
    batch = image_batch(algorithm, 0)
    global_state = torch.get_rng_state()
    first = step_with_generator(algorithm, model, batch, 10, seed=1)
    again = step_with_generator(algorithm, model, batch, 10, seed=1)
    other = step_with_generator(algorithm, model, batch, 10, seed=2)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first.stats["loss_unsup"], again.stats["loss_unsup"])
    assert not torch.equal(first.stats["loss_unsup"], other.stats["loss_unsup"])


def adversarial_direction(algorithm, network, images, seed=0):
    with torch.no_grad():
        logits = network(images).logits
    direction = algorithm.adversarial_direction(network, images, logits,
                                                torch.Generator().manual_seed(seed))
    return direction.flatten(1)


def test_vat_float64_power_iteration_resolves_semilearns_xi():
    """With xi = 1e-6 the float64 iteration finds the direction float32 finds with a probe it
    resolves (xi = 0.01); the direction does not move when the images move by one part in 1e7
    (in float32 it is partly rounding noise: ALGORITHMS.md), nor under bf16 autocast."""
    torch.manual_seed(0)
    network, images = tiny_network().eval(), 3 * torch.randn(8, 2, 4, 4)
    double = make("vat", power_iteration_precision="float64")
    resolved = make("vat", xi=0.01, power_iteration_precision="float32")
    direction = adversarial_direction(double, network, images)
    # unit norm per sample (up to semilearn's 1e-16 guard: the gradient's norm is about 1e-11)
    assert direction.dtype == torch.float32
    assert torch.allclose(direction.norm(dim=1), torch.ones(8), atol=1e-4)
    assert (F.cosine_similarity(direction, adversarial_direction(resolved, network, images)) > 0.99).all()
    moved = adversarial_direction(double, network, images * (1 + 1e-7))
    assert (F.cosine_similarity(direction, moved) > 0.9999).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):   # the paper settings' autocast: off inside
        under_bf16 = adversarial_direction(double, network, images)
    assert (F.cosine_similarity(direction, under_bf16) > 0.9999).all()
    assert all(parameter.dtype == torch.float32 for parameter in network.parameters())


def test_vat_refuses_inputs_it_cannot_perturb_and_unknown_precisions():
    with pytest.raises(ValueError, match="power_iteration_precision"):
        make("vat", power_iteration_precision="float16")
    tokens = TokenBatch(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    batch = StepBatch(Side([torch.zeros(1, 3)], torch.zeros(1, dtype=torch.long), torch.arange(1)),
                      Side([tokens], torch.zeros(2, dtype=torch.long), torch.arange(2)))
    # token ids cannot be perturbed: VAT perturbs BERT's input embeddings (vat_embed), which a
    # backbone without them cannot return
    with pytest.raises(TypeError, match=r"cannot return its input embeddings \(only BERT does"):
        run_step(make("vat"), logits_are_inputs(), batch, 0)


# ---- AdaMatch ---------------------------------------------------------------------------------
def test_adamatch_relative_threshold_by_hand():
    # mean max p over the labeled batch = (0.9 + 0.5) / 2 = 0.7; 0.95 * 0.7 = 0.665
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    assert relative_threshold(probs, 0.95).item() == pytest.approx(0.665)


def adamatch_batch():
    # labeled p [0.8, 0.1, 0.1] and [0.4, 0.3, 0.3]; unlabeled weak p [0.7, 0.2, 0.1] and
    # [0.2, 0.5, 0.3]; strong p of sample 0 [0.5, 0.25, 0.25]
    labeled = log(torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.3, 0.3]]))
    weak = log(torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    strong = log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    return logit_batch(weak, strong, labeled=labeled, labels=torch.tensor([0, 1]))


def test_adamatch_step_by_hand():
    # Threshold 0.95 * mean(0.8, 0.4) = 0.57. With momentum 0.5: p_target = 0.5 * 1/3 + 0.5 *
    # mean labeled p [0.6, 0.2, 0.2] = [0.466667, 0.266667, 0.266667]; p_model = the first
    # batch's mean [0.45, 0.35, 0.2]. Aligned sample 0: [0.7 * 1.037037, 0.2 * 0.761905,
    # 0.1 * 1.333333] = [0.725926, 0.152381, 0.133333] / 1.011640 -> q = 0.717573 >= 0.57,
    # class 0. Sample 1: [0.207407, 0.380952, 0.4] / 0.988360 -> q = 0.404711 < 0.57 (and its
    # class moved from 1 to 2). loss_unsup = -ln 0.5 / 2 = 0.346574.
    algorithm = make("adamatch", ema_momentum=0.5)
    output = run_step(algorithm, logits_are_inputs(), adamatch_batch(), 0)
    assert output.stats["threshold"].item() == pytest.approx(0.57, abs=1e-6)
    assert torch.allclose(algorithm.alignment.p_target, torch.tensor([0.466667, 0.266667, 0.266667]))
    assert torch.allclose(algorithm.alignment.p_model, torch.tensor([0.45, 0.35, 0.2]))
    assert output.stats["mask_rate"].item() == 0.5
    assert output.stats["loss_unsup"].item() == pytest.approx(0.346574, abs=1e-5)
    # the next batch is folded into both running averages (an EMA from here on)
    run_step(algorithm, logits_are_inputs(), adamatch_batch(), 1)
    assert torch.allclose(algorithm.alignment.p_target,
                          0.5 * torch.tensor([0.466667, 0.266667, 0.266667])
                          + 0.5 * torch.tensor([0.6, 0.2, 0.2]))
    assert torch.allclose(algorithm.alignment.p_model, torch.tensor([0.45, 0.35, 0.2]))


def test_adamatch_checkpoints_both_running_distributions():
    algorithm = make("adamatch", ema_momentum=0.5)
    run_step(algorithm, logits_are_inputs(), adamatch_batch(), 0)
    state = algorithm.state_dict()["alignment"]
    assert set(state) == {"p_model", "p_target", "started"}
    resumed = make("adamatch", ema_momentum=0.5)
    resumed.load_state_dict(copy.deepcopy(algorithm.state_dict()))
    assert torch.equal(resumed.alignment.p_target, algorithm.alignment.p_target)


def test_adamatch_trains_the_strong_view_only():
    algorithm, model = make("adamatch", tau=0.0), Recorder(logits_are_inputs())
    run_step(algorithm, model, adamatch_batch(), 0).loss.backward()
    (logits,) = model.outputs   # one pass: labeled, weak, strong
    assert (logits.grad[:2].abs().sum(dim=1) > 0).all()
    assert (logits.grad[2:4] == 0).all()
    assert (logits.grad[4:].abs().sum(dim=1) > 0).all()


# ---- DeFixMatch -------------------------------------------------------------------------------
def defixmatch_batch():
    # Labeled (label 1): weak p [0.96, 0.02, 0.02], strong p [0.5, 0.25, 0.25]. Unlabeled weak
    # p [0.96, 0.02, 0.02] and [0.5, 0.3, 0.2]; strong p [0.8, 0.1, 0.1] and [0.1, 0.1, 0.8].
    confident = log(torch.tensor([[0.96, 0.02, 0.02]]))
    labeled_strong = log(torch.tensor([[0.5, 0.25, 0.25]]))
    weak = log(torch.tensor([[0.96, 0.02, 0.02], [0.5, 0.3, 0.2]]))
    strong = log(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]))
    return StepBatch(Side([confident, labeled_strong], torch.tensor([1]), torch.arange(1)),
                     Side([weak, strong], torch.tensor([0, 2]), torch.arange(2)))


def test_defixmatch_loss_by_hand():
    # sup = (-ln 0.02 - ln 0.25) / 2 = (3.912023 + 1.386294) / 2 = 2.649159.
    # Unlabeled: sample 0 passes (q 0.96, class 0), sample 1 does not: -ln 0.8 / 2 = 0.111572.
    # Anti: the labeled image's own prediction (class 0, q 0.96), not its label 1:
    # -ln 0.5 / 1 = 0.693147. loss = 2.649159 + 0.5 * (0.111572 - 0.693147) = 2.358371.
    output = run_step(make("defixmatch"), logits_are_inputs(), defixmatch_batch(), 0)
    assert output.stats["loss_sup"].item() == pytest.approx(2.649159, abs=1e-5)
    assert output.stats["loss_unsup"].item() == pytest.approx(0.111572, abs=1e-5)
    assert output.stats["loss_anti"].item() == pytest.approx(0.693147, abs=1e-5)
    assert output.stats["mask_rate"].item() == 0.5 and output.stats["mask_rate_labeled"].item() == 1.0
    assert output.loss.item() == pytest.approx(2.358371, abs=1e-5)


def test_defixmatch_pseudo_labels_carry_no_gradient_and_the_anti_term_pushes_back():
    model = Recorder(logits_are_inputs())
    run_step(make("defixmatch"), model, defixmatch_batch(), 0).loss.backward()
    (logits,) = model.outputs   # one pass: labeled weak, labeled strong, unlabeled weak, strong
    p = torch.softmax(logits.detach(), -1)
    label = F.one_hot(torch.tensor(1), 3)
    # labeled weak row: half the supervised gradient only (its prediction is detached)
    assert torch.allclose(logits.grad[0], (p[0] - label) / 2, atol=1e-6)
    # labeled strong row: half the supervised gradient minus lambda_u times the anti term's
    pseudo = F.one_hot(torch.tensor(0), 3)
    assert torch.allclose(logits.grad[1], (p[1] - label) / 2 - 0.5 * (p[1] - pseudo), atol=1e-6)
    assert (logits.grad[2:4] == 0).all()


# ---- fully supervised -------------------------------------------------------------------------
def test_fully_supervised_trains_on_every_label_without_an_unlabeled_batch():
    algorithm = make("fullysupervised")
    assert algorithm.labeled_set == "all" and algorithm.views.unlabeled == ()
    batch = image_batch(algorithm, 0)
    network = tiny_network()
    output = run_step(algorithm, network, batch, 0)
    expected = F.cross_entropy(copy.deepcopy(network)(batch.labeled.views[0]).logits,
                               batch.labeled.labels)
    assert torch.allclose(output.loss, expected) and set(output.stats) == {"loss_sup"}


# ---- a short fit on the digits ----------------------------------------------------------------
@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["pimodel", "vat", "adamatch", "defixmatch", "fullysupervised"])
def test_a_short_fit_on_the_digits_beats_chance(digits, one_thread, name):
    spec, data = digits
    uratio = default_params()["algorithm_overrides"].get(name, {}).get("uratio", 2)
    options = default_train_options("digits", steps=80, batch_size=16, uratio=uratio,
                                    eval_every=80, log_every=40, checkpoint_every=80)
    split = make_split(data.train_labels.numpy(), 50, 10, 0, "digits")
    train_data = image_train_data(replace(data, test_images=data.test_images[:200],
                                          test_labels=data.test_labels[:200]),
                                  torch.tensor(split["labeled_indices"]), spec.inputs,
                                  image_augment(options), False, torch.device("cpu"))
    torch.manual_seed(0)
    network = build_network("small_cnn", 10, spec.inputs, **default_params()["models"]["small_cnn"])
    algorithm = build_algorithm(name, default_params()["algorithms"][name],
                                facts=train_data.facts(10, "all" if name == "fullysupervised" else "split"),
                                total_steps=80)
    result = Trainer(network, algorithm, train_data, train_config(options), 0,
                     torch.device("cpu")).fit()
    assert result.metrics["raw/last_error"] < 80.0   # chance: 90 %
