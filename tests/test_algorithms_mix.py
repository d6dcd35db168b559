"""MixMatch, ReMixMatch and CRMatch: their shared MixUp and rotation pieces, each loss on hand-made
tensors worked out by hand, where gradients flow and where they must not, which forwards move the
BatchNorm statistics, and a short fit on the digits. (Every algorithm's shared checks, state
round-trip included, are in test_algorithms.py; kill-and-resume through the trainer in
test_resume.py.)"""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm
from semisup.algorithms.mixup import chunked_logits, mix, mixup_draw, one_hot, sharpen_probabilities
from semisup.algorithms.rotation import all_rotations, rotate_randomly
from semisup.data.image import image_train_data
from semisup.data.modality import DataFacts
from semisup.data.splits import make_split
from semisup.models import Network, build_network
from semisup.models.cnn import Features
from semisup.train import Trainer

from pipeline.config import default_params, default_train_options
from pipeline.runs.train import image_augment, train_config

PUBLISHED = default_params()["algorithms"]


class ScaledInputs(nn.Module):
    """features = inputs flattened * s (s = 1, learnable): hand-made 'images' are the logits."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.num_features = width

    def forward(self, images):
        return images.flatten(1) * self.scale


def logits_are_inputs(algorithm, num_classes: int = 2) -> Network:
    network = Network(ScaledInputs(num_classes), nn.Identity())
    return network.add_heads(algorithm.heads(num_classes))


def with_batchnorm(algorithm, num_classes: int = 3) -> Network:
    backbone = Features(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), num_features=4)
    return Network(backbone, nn.Linear(4, num_classes)).add_heads(algorithm.heads(4))


def make(name, counts=(1, 1), total_steps=100, **params):
    facts = DataFacts(num_classes=len(counts), num_labeled=sum(counts), num_unlabeled=16,
                      labeled_class_counts=counts)
    return build_algorithm(name, {**PUBLISHED[name], **params}, facts=facts, total_steps=total_steps)


def context(network, step=0, seed=0):
    return StepContext(network, step, torch.Generator().manual_seed(seed),
                       host_generator=torch.Generator().manual_seed(seed))


def as_images(rows) -> torch.Tensor:
    """Rows of logits as 1x1 'images' with one channel per class (square: they can be rotated)."""
    return torch.as_tensor(rows, dtype=torch.float32)[:, :, None, None]


def batch(labeled, labels, *unlabeled) -> StepBatch:
    unlabeled_rows = len(unlabeled[0])
    return StepBatch(Side([labeled], torch.as_tensor(labels), torch.arange(len(labeled))),
                     Side(list(unlabeled), torch.zeros(unlabeled_rows, dtype=torch.long),
                          torch.arange(unlabeled_rows)))


def image_batch(algorithm, num_classes=3, labeled=4, unlabeled=4, seed=0) -> StepBatch:
    generator = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randn(n, 2, 4, 4, generator=generator)
    return StepBatch(
        Side([images(labeled)], torch.randint(0, num_classes, (labeled,), generator=generator),
             torch.arange(labeled)),
        Side([images(unlabeled) for _ in algorithm.views.unlabeled],
             torch.randint(0, num_classes, (unlabeled,), generator=generator), torch.arange(unlabeled)))


def batchnorm_updates(network) -> int:
    return int(network.backbone[1].num_batches_tracked)


# ---- MixUp ----------------------------------------------------------------------------------------
def test_mixup_draws_the_larger_of_lambda_and_one_minus_lambda_from_the_host_generator():
    ctx = context(nn.Identity(), seed=3)
    draws = [mixup_draw(ctx, 5, 0.5) for _ in range(50)]
    assert all(0.5 <= lam <= 1.0 for lam, _ in draws)
    assert len({lam for lam, _ in draws}) == 50                      # a new lambda every step
    assert all(sorted(p.tolist()) == list(range(5)) for _, p in draws)   # permutations of the rows
    again = context(nn.Identity(), seed=3)
    assert [mixup_draw(again, 5, 0.5)[0] for _ in range(50)] == [lam for lam, _ in draws]
    assert mixup_draw(ctx, 5, 0.0)[0] == 1.0                          # alpha 0: no mixing
    with pytest.raises(ValueError, match="host_generator"):
        mixup_draw(StepContext(nn.Identity(), 0, torch.Generator()), 5, 0.5)


def test_mix_mixes_inputs_and_targets_with_one_lambda_and_one_permutation():
    inputs = torch.tensor([[0.0], [10.0], [20.0]])
    targets = one_hot(torch.tensor([0, 1, 1]), 2, torch.float32)
    mixed_x, mixed_y = mix(0.75, torch.tensor([1, 2, 0]), inputs, targets)
    # row 0: 0.75 * 0 + 0.25 * 10 = 2.5; row 1: 7.5 + 5 = 12.5; row 2: 15 + 0 = 15
    assert mixed_x[:, 0].tolist() == [2.5, 12.5, 15.0]
    # row 0: 0.75 [1, 0] + 0.25 [0, 1]; row 1: [0, 1]; row 2: 0.75 [0, 1] + 0.25 [1, 0]
    assert mixed_y.tolist() == [[0.75, 0.25], [0.0, 1.0], [0.25, 0.75]]


def test_sharpening_raises_probabilities_to_one_over_T_and_renormalises():
    # [0.6, 0.4] ** 2 = [0.36, 0.16], sum 0.52
    sharpened = sharpen_probabilities(torch.tensor([[0.6, 0.4]]), 0.5)
    assert torch.allclose(sharpened, torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))


def test_chunks_are_batchnorm_batches_of_their_own_and_only_the_first_updates_the_statistics():
    torch.manual_seed(0)
    algorithm = make("mixmatch", counts=(1, 1, 1))
    network = with_batchnorm(algorithm)
    inputs = torch.randn(6, 2, 4, 4)
    alone = copy.deepcopy(network)
    expected = [alone(inputs[:2]).logits]
    logits = chunked_logits(network, inputs, 2)
    assert [len(chunk) for chunk in logits] == [2, 2, 2]
    assert torch.equal(logits[0], expected[0])
    bn = network.backbone[1]
    assert torch.equal(bn.running_mean, alone.backbone[1].running_mean)   # chunk 0 only
    assert int(bn.num_batches_tracked) == 1
    assert torch.allclose(logits[2], copy.deepcopy(alone)(inputs[4:]).logits)   # its own batch


# ---- rotations ------------------------------------------------------------------------------------
def test_a_quarter_turn_is_counter_clockwise_as_torchvisions_rotate():
    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    rotated, labels = all_rotations(image)
    assert rotated[1, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]   # the top right corner goes to the top left
    assert labels.tolist() == [0, 1, 2, 3]
    images = torch.randn(3, 2, 5, 5)
    rotated, labels = all_rotations(images)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3   # blocks, as CRMatch's RotNet
    for k, angle in enumerate((0, 90, 180, 270)):
        assert torch.equal(rotated[3 * k:3 * k + 3], TF.rotate(images, angle))


def test_each_image_is_turned_by_its_own_draw_from_the_step_generator():
    images = torch.randn(40, 2, 5, 5)
    rotated, turns = rotate_randomly(images, torch.Generator().manual_seed(1))
    assert set(turns.tolist()) == {0, 1, 2, 3}
    for image, turned, k in zip(images, rotated, turns.tolist(), strict=True):
        assert torch.equal(turned, TF.rotate(image, 90 * k))
    assert torch.equal(rotate_randomly(images, torch.Generator().manual_seed(1))[1], turns)
    with pytest.raises(ValueError, match="square"):
        rotate_randomly(torch.randn(2, 1, 4, 5), torch.Generator())


# ---- MixMatch -------------------------------------------------------------------------------------
def test_mixmatch_loss_by_hand_without_mixing():
    algorithm = make("mixmatch", mixup_alpha=0.0, rampup_fraction=0.0)   # lambda' = 1, weight 100
    network = logits_are_inputs(algorithm)
    # labeled logits [0, 0], label 0; weak views' probabilities [0.6, 0.4] and [0.8, 0.2]
    step_batch = batch(torch.zeros(1, 2), [0], torch.log(torch.tensor([[0.6, 0.4]])),
                       torch.log(torch.tensor([[0.8, 0.2]])))
    output = algorithm.training_step(context(network), step_batch)
    # guess = sharpen([0.7, 0.3], 0.5) = [0.49, 0.09] / 0.58 = [0.844828, 0.155172]
    # sup = H([1, 0], softmax([0, 0])) = ln 2
    # unsup = mean over the two views of mean_c (p - guess)^2:
    #   view 1: (0.6 - 0.844828)^2 = 0.0599405 (both classes); view 2: (0.8 - 0.844828)^2 = 0.0020095
    #   (0.0599405 + 0.0020095) / 2 = 0.0309750;  loss = ln 2 + 100 * 0.0309750 = 3.790650
    assert output.stats["loss_sup"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert output.stats["loss_unsup"].item() == pytest.approx(0.0309750, abs=1e-6)
    assert output.loss.item() == pytest.approx(3.790650, abs=1e-5)
    assert output.stats["mixup_lambda"] == 1.0


def test_mixmatch_weight_ramps_up_over_its_fraction_of_training():
    algorithm = make("mixmatch", counts=(1, 1, 1))   # lambda_u 100 over the first 40 % of 100 steps
    network = with_batchnorm(algorithm)
    weights = [algorithm.training_step(context(network, step), image_batch(algorithm))
               .stats["unsup_weight"].item() for step in (0, 20, 40, 90)]
    assert weights == [0.0, 50.0, 100.0, 100.0]


def test_mixmatch_guess_carries_no_gradient_and_only_the_first_chunk_moves_batchnorm():
    torch.manual_seed(0)
    algorithm = make("mixmatch", counts=(1, 1, 1), rampup_fraction=0.0)
    network = with_batchnorm(algorithm)
    outputs = []
    network.register_forward_hook(lambda module, inputs, output: outputs.append(output.logits))
    output = algorithm.training_step(context(network), image_batch(algorithm))
    output.loss.backward()
    # two weak forwards without gradient, then 3 chunks of 4: labeled + 2 x 4 unlabeled rows
    assert [o.requires_grad for o in outputs] == [False, False, True, True, True]
    assert batchnorm_updates(network) == 1
    assert network.backbone[0].weight.grad.abs().sum() > 0


def test_mixmatch_draws_its_mixup_from_the_step_generators_only():
    algorithm = make("mixmatch", counts=(1, 1, 1))
    network = with_batchnorm(algorithm)
    step_batch = image_batch(algorithm)
    torch.manual_seed(0)
    first = algorithm.training_step(context(copy.deepcopy(network), 50, seed=1), step_batch)
    torch.manual_seed(123)   # torch's global generator plays no part
    again = algorithm.training_step(context(copy.deepcopy(network), 50, seed=1), step_batch)
    other = algorithm.training_step(context(copy.deepcopy(network), 50, seed=2), step_batch)
    assert torch.equal(first.loss, again.loss) and not torch.equal(first.loss, other.loss)


# ---- ReMixMatch -----------------------------------------------------------------------------------
def test_remixmatch_loss_by_hand_without_mixing():
    # Labeled prior [0.75, 0.25] (3 and 1 labeled images); lambda' = 1; ramp on
    algorithm = make("remixmatch", counts=(3, 1), mixup_alpha=0.0, rampup_fraction=0.0)
    network = logits_are_inputs(algorithm)
    nn.init.zeros_(network.heads["rotation"].weight)   # rotation logits 0: loss ln 4
    nn.init.zeros_(network.heads["rotation"].bias)
    weak, strong_0, strong_1 = as_images([[0.0, 0.0]]), as_images([[math.log(0.9), math.log(0.1)]]), \
        as_images([[0.0, 0.0]])
    output = algorithm.training_step(context(network),
                                     batch(as_images([[1.0, 0.0]]), [0], weak, strong_0, strong_1))
    # weak [0.5, 0.5] -> p_model = [0.5, 0.5] -> aligned [0.75, 0.25] -> guess [0.5625, 0.0625]
    # / 0.625 = [0.9, 0.1]
    assert torch.allclose(algorithm.alignment.p_model, torch.tensor([0.5, 0.5]))
    # sup = H([1, 0], softmax([1, 0])) = ln(1 + e^-1) = 0.313262
    # pre-mixup = H([0.9, 0.1], [0.9, 0.1]) = 0.325083
    # unsup over the rows s0, s1, w: (0.325083 + ln 2 + ln 2) / 3 = 0.570459
    # loss = 0.313262 + 0.5 * 0.325083 + 1.5 * 0.570459 + 0.5 * ln 4 = 2.024639
    assert output.stats["loss_sup"].item() == pytest.approx(0.313262, abs=1e-5)
    assert output.stats["loss_pre_mixup"].item() == pytest.approx(0.325083, abs=1e-5)
    assert output.stats["loss_unsup"].item() == pytest.approx(0.570459, abs=1e-5)
    assert output.stats["loss_rotation"].item() == pytest.approx(math.log(4), abs=1e-6)
    assert output.loss.item() == pytest.approx(2.024639, abs=1e-5)
    # semilearn's target distribution is float64: so are the guess and the losses against it
    assert output.loss.dtype == torch.float64 and algorithm.alignment.p_target.dtype == torch.float64


def test_remixmatch_aligns_to_the_labeled_prior_with_a_running_mean_of_the_weak_predictions():
    algorithm = make("remixmatch", counts=(3, 1), alignment_momentum=0.9)
    network = logits_are_inputs(algorithm)
    assert algorithm.alignment.p_target.tolist() == [0.75, 0.25]
    views = lambda weak: batch(as_images([[0.0, 0.0]]), [0], as_images(weak), as_images([[0.0, 0.0]]),
                               as_images([[0.0, 0.0]]))
    algorithm.training_step(context(network), views(torch.log(torch.tensor([[0.5, 0.5]]))))
    algorithm.training_step(context(network), views(torch.log(torch.tensor([[0.9, 0.1]]))))
    # the first batch's mean, then 0.9 [0.5, 0.5] + 0.1 [0.9, 0.1] = [0.54, 0.46]
    assert torch.allclose(algorithm.alignment.p_model, torch.tensor([0.54, 0.46]))


def test_remixmatch_trains_its_rotation_head_and_moves_batchnorm_in_the_first_chunk_only():
    torch.manual_seed(0)
    algorithm = make("remixmatch", counts=(1, 1, 1), rampup_fraction=0.0)
    network = with_batchnorm(algorithm)
    outputs = []
    network.register_forward_hook(lambda module, inputs, output: outputs.append(output.logits))
    output = algorithm.training_step(context(network), image_batch(algorithm))
    output.loss.backward()
    # weak (no gradient), strong 0, its rotations, 4 chunks of the 4 + 3 x 4 mixed rows
    assert [o.requires_grad for o in outputs] == [False] + [True] * 6
    assert batchnorm_updates(network) == 1
    assert network.heads["rotation"].weight.grad.abs().sum() > 0
    without = make("remixmatch", counts=(1, 1, 1), lambda_rot=0.0)
    assert without.heads(4) == {}
    assert "loss_rotation" not in without.training_step(
        context(with_batchnorm(without)), image_batch(without)).stats


# ---- CRMatch --------------------------------------------------------------------------------------
def crmatch_by_hand(**params):
    algorithm = make("crmatch", tau=0.8, **params)
    network = logits_are_inputs(algorithm)
    with torch.no_grad():   # the feature head d = identity; rotation logits 0 (loss ln 4)
        network.heads["feature_distance"].weight.copy_(torch.eye(2))
        network.heads["feature_distance"].bias.zero_()
        if "rotation" in network.heads:
            nn.init.zeros_(network.heads["rotation"][2].weight)
            nn.init.zeros_(network.heads["rotation"][2].bias)
    # weak: softmax([2, 0]) = [0.881, 0.119] passes tau 0.8 (class 0); softmax([0, 1]) = [0.269,
    # 0.731] does not. strong: [1, 1] for both.
    weak = as_images([[2.0, 0.0], [0.0, 1.0]]).requires_grad_()
    views = [weak, as_images([[1.0, 1.0], [1.0, 1.0]])]
    views += [as_images([[0.0, 0.0], [0.0, 0.0]])] if len(algorithm.views.unlabeled) == 3 else []
    step_batch = batch(as_images([[0.0, 0.0]]), [0], *views)
    return algorithm, weak, algorithm.training_step(context(network), step_batch)


# ---- MixUp of pooled features (semilearn's mixup_manifold, text and audio) -----------------------
MIX_FEATURES = {"mixmatch": {}, "remixmatch": {"lambda_rot": 0.0}}


@pytest.mark.parametrize("name", sorted(MIX_FEATURES))
def test_mixing_the_features_of_a_linear_backbone_gives_the_loss_of_mixing_its_inputs(name):
    """features = inputs * s: a mix of features is the features of the mix, so the losses agree;
    the gradient differs (mixed_features_gradient backbone): the weak features come from the
    no-grad guessing passes."""
    algorithm = make(name, counts=(1, 1, 1), rampup_fraction=0.0, mixed_features_gradient="backbone",
                     **MIX_FEATURES[name])
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 3, generator=generator) for _ in range(4)]
    step_batch = batch(logits[0], [0, 1, 2, 0], *logits[1:1 + len(algorithm.views.unlabeled)])
    losses, gradients = {}, {}
    for space in ("inputs", "features"):
        algorithm.mixup_space = space
        algorithm.load_state_dict(make(name, counts=(1, 1, 1), **MIX_FEATURES[name]).state_dict())
        network = logits_are_inputs(algorithm, num_classes=3)
        output = algorithm.training_step(context(network), step_batch)
        (gradients[space],) = torch.autograd.grad(output.loss, network.backbone.scale)
        losses[space] = output.loss.item()
    assert losses["features"] == pytest.approx(losses["inputs"], rel=1e-5)
    assert gradients["features"].item() != pytest.approx(gradients["inputs"].item(), rel=1e-3)


@pytest.mark.parametrize("name", sorted(MIX_FEATURES))
def test_mixed_features_go_through_the_classifier_alone_and_the_backbone_sees_each_view_once(name):
    algorithm = make(name, counts=(1, 1, 1), mixup_space="features", **MIX_FEATURES[name])
    network = with_batchnorm(algorithm).eval()   # eval: features are the same pass after pass
    step_batch = image_batch(algorithm)
    backbone_inputs, classifier_inputs = [], []
    network.backbone.register_forward_hook(lambda m, args, out: backbone_inputs.append(args[0]))
    network.classifier.register_forward_hook(lambda m, args, out: classifier_inputs.append(args[0]))
    output = algorithm.training_step(context(network), step_batch)

    views = [*step_batch.unlabeled.views, *step_batch.labeled.views]
    assert len(backbone_inputs) == len(views)     # no forward of mixed images
    assert all(any(x is view for view in views) for x in backbone_inputs)
    features = {id(view): network.backbone(view) for view in views}
    (x_lb,), unlabeled = step_batch.labeled.views, step_batch.unlabeled.views
    order = [x_lb, *unlabeled] if name == "mixmatch" else [x_lb, unlabeled[1], unlabeled[2],
                                                          unlabeled[0]]
    rows = torch.cat([features[id(view)] for view in order])
    lam, permutation = mixup_draw(context(network), len(rows), algorithm.mixup_alpha)
    mixed = torch.cat(classifier_inputs[-len(order):])   # the chunks, after the views' passes
    assert output.stats["mixup_lambda"].item() == pytest.approx(lam)
    assert torch.allclose(mixed, lam * rows + (1 - lam) * rows[permutation], atol=1e-6)


@pytest.mark.parametrize("name, pre_mixup, trains_backbone", [
    ("mixmatch", {}, False), ("remixmatch", {"lambda_pre_mixup": 0.0}, False),
    ("remixmatch", {"lambda_pre_mixup": 0.5}, True)])
def test_semilearns_mix_of_features_carries_no_gradient_to_the_backbone(name, pre_mixup,
                                                                        trains_backbone):
    """mixed_features_gradient none (semilearn's mixup_one_target is no-grad): the mixed rows
    train the classifier alone; ReMixMatch's backbone learns from its pre-mixup term only."""
    algorithm = make(name, counts=(1, 1, 1), rampup_fraction=0.0, mixup_space="features",
                     mixed_features_gradient="none", **MIX_FEATURES[name], **pre_mixup)
    network = with_batchnorm(algorithm)
    output = algorithm.training_step(context(network), image_batch(algorithm))
    (gradient,) = torch.autograd.grad(output.loss, network.backbone[0].weight, allow_unused=True,
                                      retain_graph=True)
    assert (gradient is not None and bool(gradient.abs().sum() > 0)) == trains_backbone
    assert torch.autograd.grad(output.loss, network.classifier.weight)[0].abs().sum() > 0


def test_mixup_space_names_its_values_and_inputs_of_tokens_are_refused_with_the_fix():
    from semisup.data.inputs import TokenBatch

    with pytest.raises(ValueError, match="by_modality, inputs, features"):
        make("mixmatch", mixup_space="manifold")
    with pytest.raises(ValueError, match="mixed_features_gradient 'all' is not one of none, backbone"):
        make("remixmatch", mixed_features_gradient="all")
    algorithm = make("mixmatch", mixup_space="inputs")
    tokens = TokenBatch(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="mixup_space to features or by_modality"):
        algorithm.training_step(context(nn.Identity()), batch(tokens, [0, 1], tokens, tokens))


def test_remixmatch_refuses_to_rotate_tokens_and_says_to_set_lambda_rot_to_zero():
    from semisup.data.inputs import TokenBatch

    algorithm = make("remixmatch")
    tokens = TokenBatch(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="lambda_rot to 0"):
        algorithm.training_step(context(nn.Identity()), batch(tokens, [0, 1], tokens, tokens, tokens))


def test_crmatch_loss_by_hand():
    *_, output = crmatch_by_hand()
    # sup = H(0, softmax([0, 0])) = ln 2; unsup = (H(0, softmax([1, 1])) * 1 + ... * 0) / 2 = ln 2 / 2
    # feature = (max(0, cos([1, 1], [2, 0])) * 1 + 0) / 2 = 0.707107 / 2; rotation = ln 4
    # loss = ln 2 + ln 2 / 2 + 0.353553 + ln 4 = 2.779569
    assert output.stats["mask_rate"] == 0.5
    assert output.stats["loss_unsup"].item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert output.stats["loss_feature"].item() == pytest.approx(math.sqrt(0.5) / 2, abs=1e-6)
    assert output.stats["loss_rotation"].item() == pytest.approx(math.log(4), abs=1e-6)
    assert output.loss.item() == pytest.approx(2.779569, abs=1e-5)


def test_crmatch_feature_distance_pushes_both_views_of_confident_samples_only():
    _, weak, output = crmatch_by_hand()
    output.loss.backward()
    # the weak view's gradient comes from the feature term alone (its pseudo-label is detached):
    # the confident sample's, not the masked-out one's
    assert weak.grad[0].abs().sum() > 0 and weak.grad[1].abs().sum() == 0


def test_crmatch_without_rotation_has_no_rotation_head_view_or_loss():
    algorithm, _, output = crmatch_by_hand(lambda_rot=0.0)
    assert algorithm.views.unlabeled == ("weak", "strong") and set(algorithm.heads(2)) == {"feature_distance"}
    assert "loss_rotation" not in output.stats
    # ln 2 + ln 2 / 2 + 0.353553
    assert output.loss.item() == pytest.approx(1.5 * math.log(2) + math.sqrt(0.5) / 2, abs=1e-5)


def test_crmatch_runs_every_image_as_one_batchnorm_batch_with_four_turns_of_b_images():
    torch.manual_seed(0)
    algorithm = make("crmatch", counts=(1, 1, 1))
    network = with_batchnorm(algorithm)
    sizes = []
    network.register_forward_hook(lambda module, inputs, output: sizes.append(len(output.logits)))
    algorithm.training_step(context(network), image_batch(algorithm, labeled=2, unlabeled=6))
    assert sizes == [2 + 6 + 6 + 4 * 2] and batchnorm_updates(network) == 1


# ---- a short fit on the digits --------------------------------------------------------------------
# The published unlabeled weights assume a ramp over 2^20 steps: at full weight within 100 steps the
# untrained network's own guesses take over (MixMatch and ReMixMatch predict one class for some 100
# steps before they recover), so this short fit takes a tenth of them; CRMatch a threshold its
# predictions reach.
SHORT_FIT = {"mixmatch": ({"lambda_u": 10.0}, 1),
             "remixmatch": ({"lambda_u": 0.15, "lambda_pre_mixup": 0.05}, 1),
             "crmatch": ({"tau": 0.7}, 2)}


@pytest.fixture
def one_thread():
    """One thread, as the default study's jobs (train.threads: 1); far faster on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(SHORT_FIT))
def test_a_short_fit_on_the_digits_beats_chance(digits, one_thread, name):
    spec, data = digits
    changes, uratio = SHORT_FIT[name]
    split = make_split(data.train_labels.numpy(), 50, 10, 0, "digits")
    options = default_train_options("digits", steps=100, batch_size=16, uratio=uratio,
                                    eval_every=100, log_every=50, checkpoint_every=1000, last_k=1)
    train_data = image_train_data(
        replace(data, test_images=data.test_images[:200], test_labels=data.test_labels[:200]),
        torch.tensor(split["labeled_indices"]), spec.inputs, image_augment(options), False,
        torch.device("cpu"))
    torch.manual_seed(0)
    network = build_network("small_cnn", 10, spec.inputs, **default_params()["models"]["small_cnn"])
    algorithm = build_algorithm(name, {**PUBLISHED[name], **changes}, facts=train_data.facts(10),
                                total_steps=100)
    result = Trainer(network, algorithm, train_data, train_config(options), 0,
                     torch.device("cpu")).fit()
    assert all(row["train/loss_unsup"] > 0 for row in result.stat_history)   # it did use them
    assert result.metrics["raw/last_error"] < 80.0   # chance: 90 %
