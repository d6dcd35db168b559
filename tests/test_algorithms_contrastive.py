"""CoMatch and SimMatch: their pieces on hand-made tensors (answers worked out in the comments),
whole steps on a network whose logits are its inputs and whose projection is their direction,
where gradients flow and where they must not (queues, banks, targets), the memory's sizing, the
references' quirks as parameters, a short fit on digits, and no host synchronisation on CUDA.

(Each step was also checked against semilearn 0.3.2's train_step on the same inputs and weights,
30 steps with its smoothing and similarities off and on: losses, masks, gradients, queues and
bank within 1e-6; that check needs semilearn and is not part of the suite.)"""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm
from semisup.algorithms.comatch import graph_contrastive_loss, memory_smoothed, pseudo_label_graph
from semisup.algorithms.similarity import L2Normalise, QueueAlignment, one_hot, projection_head
from semisup.algorithms.simmatch import (instance_consistency_loss, teacher_targets,
                                        updated_bank_rows)
from semisup.data.image import image_train_data
from semisup.data.modality import DataFacts
from semisup.data.splits import make_split
from semisup.models import Network, build_network
from semisup.train import Trainer

from pipeline.config import default_params, default_train_options
from pipeline.errors import ConfigError
from pipeline.runs.train import image_augment, train_config
from pipeline.validation import validate

PUBLISHED = default_params()["algorithms"]
LN4 = math.log(4.0)
L = math.log(1 + math.exp(-2))   # -log softmax([2, 0])[0] = 0.126928


def make(name, num_labeled=2, num_classes=2, **params):
    facts = DataFacts(num_classes=num_classes, num_labeled=num_labeled, num_unlabeled=8,
                      labeled_class_counts=(1,) * num_classes)
    return build_algorithm(name, {**PUBLISHED[name], **params}, facts=facts, total_steps=100)


class Inputs(nn.Module):
    """features = the inputs (flattened)."""

    num_features = 2

    def forward(self, inputs):
        return inputs.flatten(1)


class Copy(nn.Module):
    def forward(self, x):
        return x.clone()   # its own tensor: its gradient is that of the losses on the logits


class Retaining(nn.Module):
    """logits = inputs, proj = their direction; keeps each output's gradient after backward."""

    def __init__(self):
        super().__init__()
        self.network = Network(Inputs(), Copy(), {"proj": L2Normalise()})
        self.outputs = []

    def forward(self, inputs, want=()):
        output = self.network(inputs, want=want)
        for value in (output.logits, *output.heads.values()):
            value.retain_grad()
        self.outputs.append(output)
        return output


def tensor(rows):
    return torch.tensor(rows, dtype=torch.float32)


def batch(labeled, labels, indices, *unlabeled) -> StepBatch:
    """The inputs are the logits each view will produce; they require grad (to see gradients)."""
    views = [tensor(view).requires_grad_() for view in unlabeled]
    return StepBatch(Side([tensor(labeled).requires_grad_()], torch.tensor(labels),
                          torch.tensor(indices)),
                     Side(views, torch.zeros(len(views[0]), dtype=torch.long),
                          torch.arange(len(views[0]))))


def step(algorithm, network, step_batch, at=0, generator=None):
    ctx = StepContext(network, at, generator or torch.Generator().manual_seed(0))
    return algorithm.training_step(ctx, step_batch)


# ---- shared parts ---------------------------------------------------------------------------------
def test_the_projection_head_is_two_layers_and_unit_norm():
    torch.manual_seed(0)
    head = projection_head(6, 64)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear, L2Normalise]
    assert (head[0].in_features, head[0].out_features, head[2].out_features) == (6, 6, 64)
    assert torch.allclose(head(torch.randn(5, 6)).norm(dim=1), torch.ones(5))
    assert make("comatch").heads(6)["proj"][2].out_features == 64
    assert make("simmatch").heads(6)["proj"][2].out_features == 128


def test_queue_alignment_counts_the_empty_rows_as_semilearn_or_only_the_filled_ones():
    probs = tensor([[0.8, 0.2]])
    semilearn, filled = QueueAlignment(2, 4, "all_rows"), QueueAlignment(2, 4, "filled_rows")
    aligned_semilearn, aligned_filled = semilearn(probs), filled(probs)
    # all_rows: ([0.8, 0.2] + three zero rows) / 4 = [0.2, 0.05]; filled_rows: [0.8, 0.2]
    assert torch.allclose(semilearn.p_model(), tensor([0.2, 0.05]))
    assert torch.allclose(filled.p_model(), tensor([0.8, 0.2]))
    # p * 0.5 / p_model, renormalised: [0.5, 0.5] either way but for the 1e-6 guards:
    # [0.8 / 0.200001, 0.2 / 0.050001] = [3.99998, 3.99992] -> [0.500004, 0.499996]
    assert torch.allclose(aligned_filled, tensor([[0.5, 0.5]]), atol=1e-7)
    assert torch.allclose(aligned_semilearn, tensor([[0.500004, 0.499996]]), atol=1e-6)
    assert not torch.equal(aligned_semilearn, aligned_filled)
    for _ in range(3):   # once the queue is full the two agree
        semilearn(tensor([[0.6, 0.4]])), filled(tensor([[0.6, 0.4]]))
    assert torch.equal(semilearn.p_model(), filled.p_model())
    with pytest.raises(ValueError, match="alignment_mean"):
        QueueAlignment(2, 4, "mean")


def test_one_hot_rows():
    assert one_hot(torch.tensor([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]


# ---- CoMatch's pieces ---------------------------------------------------------------------------
def test_memory_smoothing_mixes_in_the_probabilities_of_similar_remembered_samples():
    # affinity = softmax([1, 0] / 1) = [e / (e + 1), 1 / (e + 1)] = [0.731059, 0.268941];
    # affinity @ P = [0.731059, 0.268941]; 0.9 * [0.5, 0.5] + 0.1 * that = [0.523106, 0.476894]
    smoothed = memory_smoothed(tensor([[0.5, 0.5]]), tensor([[1.0, 0.0]]),
                               tensor([[1.0, 0.0], [0.0, 1.0]]), tensor([[1.0, 0.0], [0.0, 1.0]]),
                               alpha=0.9, T=1.0)
    assert torch.allclose(smoothed, tensor([[0.523106, 0.476894]]), atol=1e-6)


def test_the_pseudo_label_graph_has_self_loops_cuts_weak_edges_and_normalises_rows():
    # p p^T = [[1, .9, 0], [.9, .82, .1], [0, .1, 1]]; diagonal 1; < 0.8 cut:
    # [[1, .9, 0], [.9, 1, 0], [0, 0, 1]]; rows / [1.9, 1.9, 1]
    graph = pseudo_label_graph(tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), threshold=0.8)
    expected = tensor([[1 / 1.9, 0.9 / 1.9, 0.0], [0.9 / 1.9, 1 / 1.9, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(graph, expected)


def test_the_graph_contrastive_loss_is_the_cross_entropy_of_the_graph_and_the_similarities():
    # identity graph, T = 0.5: softmax([1, 0] / 0.5) = [0.880797, 0.119203] per row;
    # loss = -log(0.880797 + 1e-7) = L = 0.126928 for each row
    eye = torch.eye(2)
    assert torch.allclose(graph_contrastive_loss(eye, eye, eye, T=0.5), torch.tensor(L), atol=1e-6)
    # a graph linking both samples: 0.5 * (L + (2 + L)) = 1 + L
    half = torch.full((2, 2), 0.5)
    assert torch.allclose(graph_contrastive_loss(eye, eye, half, T=0.5), torch.tensor(1 + L),
                          atol=1e-6)


# ---- CoMatch's step ------------------------------------------------------------------------------
def comatch_batch():
    # labeled [1, 1] (class 0): CE = ln 2. Weak: probs [[.8, .2], [.2, .8]] (batch mean uniform,
    # so alignment leaves them). Strong 0: logits [[2, 0], [0, 2]], projections e1, e2. Strong 1:
    # projections e1, e2.
    return batch([[1.0, 1.0]], [0], [0], [[LN4, 0.0], [0.0, LN4]], [[2.0, 0.0], [0.0, 2.0]],
                 [[3.0, 0.0], [0.0, 3.0]])


def comatch(**params):
    return make("comatch", **{"tau": 0.75, "T": 0.5, "projection_dim": 2, "queue_batches": 1,
                              "alignment_batches": 1, "smoothing_start_step": 1, **params})


def test_a_comatch_step_by_hand():
    algorithm, network = comatch(), Retaining()
    output = step(algorithm, network, comatch_batch())
    # unsupervised: H([.8, .2], softmax([2, 0])) = .8 L + .2 (2 + L) = L + 0.4 per sample, both
    # selected (0.8 >= 0.75); graph p p^T: off-diagonal .32 < .8 -> identity -> contrast = L
    assert torch.allclose(output.stats["loss_unsup"], torch.tensor(L + 0.4))
    assert torch.allclose(output.stats["loss_contrast"], torch.tensor(L), atol=1e-6)
    assert torch.allclose(output.loss, torch.tensor(math.log(2) + 0.4 + 2 * L), atol=1e-6)
    assert output.stats["mask_rate"] == 1.0
    # the memory: weak projections then the labeled one; aligned probabilities then one-hot labels
    r = 1 / math.sqrt(2)
    assert torch.allclose(algorithm.memory_features.rows, tensor([[1, 0], [0, 1], [r, r]]))
    assert torch.allclose(algorithm.memory_probs.rows, tensor([[.8, .2], [.2, .8], [1, 0]]))


@pytest.mark.parametrize("at, smoothed", [(1, False), (2, True), (5, True)])
def test_comatch_smooths_from_its_start_step_once_the_memory_is_full(at, smoothed):
    # start 1, memory of 1 step: semilearn's `it > queue_batch` makes step 1 too early
    algorithm = comatch()
    step(algorithm, Retaining(), comatch_batch())   # fills the memory
    output = step(algorithm, Retaining(), comatch_batch(), at=at)
    if not smoothed:
        assert torch.allclose(output.stats["loss_unsup"], torch.tensor(L + 0.4))
        return
    # Z = [e1, e2, (e1 + e2) / sqrt2], P = [[.8, .2], [.2, .8], [1, 0]] (the labeled sample's).
    # sample 0: z . Z^T / T = [1, 0, 1/sqrt2] / 0.5 -> a = e^[2, 0, 1.414214] / 12.502306
    # = [0.591015, 0.079985, 0.328999]; a @ P = [.8 * .591015 + .2 * .079985 + .328999, ...]
    # = [0.817809, 0.182191]; target 0.9 [.8, .2] + 0.1 a @ P = [0.801781, 0.198219].
    # sample 1: a = [0.079985, 0.591015, 0.328999]; a @ P = [0.511191, 0.488809];
    # target 0.9 [.2, .8] + 0.1 a @ P = [0.231119, 0.768881] (both >= 0.75: selected)
    P = tensor([[.8, .2], [.2, .8], [1, 0]])
    a = torch.softmax(tensor([[2.0, 0.0, math.sqrt(2)], [0.0, 2.0, math.sqrt(2)]]), dim=1)
    assert torch.allclose(a @ P, tensor([[0.817809, 0.182191], [0.511191, 0.488809]]), atol=1e-6)
    targets = 0.9 * tensor([[.8, .2], [.2, .8]]) + 0.1 * a @ P
    # H(t0, softmax([2, 0])) = L + 2 t0[1]; H(t1, softmax([0, 2])) = L + 2 t1[0]
    expected = L + (targets[0, 1] + targets[1, 0])   # the mean of the two: L + 0.429338
    assert torch.allclose(output.stats["loss_unsup"], expected, atol=1e-6)
    assert torch.allclose(expected, torch.tensor(L + 0.429338), atol=1e-6)


def test_comatch_gradients_reach_the_strong_views_only_and_never_the_memory():
    algorithm, network = comatch(), Retaining()
    step(algorithm, network, comatch_batch())
    output = step(algorithm, network, comatch_batch(), at=3)   # with smoothing
    output.loss.backward()
    logits, proj = network.outputs[-1].logits.grad, network.outputs[-1].heads["proj"].grad
    rows = lambda grad: grad.abs().sum(dim=1).tolist()
    # rows: labeled, weak x 2, strong 0 x 2, strong 1 x 2
    assert [g > 0 for g in rows(logits)] == [True, False, False, True, True, False, False]
    assert [g > 0 for g in rows(proj)] == [False, False, False, True, True, True, True]
    for queue in (algorithm.memory_features, algorithm.memory_probs,
                  algorithm.alignment.batch_means):
        assert not queue.rows.requires_grad and queue.rows.grad_fn is None


def test_comatch_sizes_its_memory_at_the_first_step_to_queue_batches_steps_of_samples():
    algorithm = comatch(queue_batches=3)
    assert algorithm.memory_features.size == 1   # a placeholder until the batch size is known
    step(algorithm, Retaining(), comatch_batch())
    assert algorithm.memory_features.size == algorithm.memory_probs.size == 3 * (1 + 2)
    resumed = comatch(queue_batches=3)
    resumed.load_state_dict(copy.deepcopy(algorithm.state_dict()))   # a checkpoint's size
    assert resumed.memory_features.size == 9 and resumed.memory_features.count == 3
    with pytest.raises(ValueError, match="batch size must not change"):
        step(algorithm, Retaining(), batch([[1.0, 1.0]], [0], [0], *[[[LN4, 0.0]]] * 3))


# ---- SimMatch's pieces --------------------------------------------------------------------------
def test_simmatch_teacher_scales_similarities_by_class_probabilities_and_aggregates_per_class():
    # bank labels [0, 1, 0]; q = [.5, .3, .2], p = [.6, .4]:
    # scaled [.5 * .6, .3 * .4, .2 * .6] = [.30, .12, .12] / .54; aggregated [.5 + .2, .3]
    teacher, aggregated = teacher_targets(tensor([[0.5, 0.3, 0.2]]), tensor([[0.6, 0.4]]),
                                          torch.tensor([0, 1, 0]), 2)
    assert torch.allclose(teacher, tensor([[0.30, 0.12, 0.12]]) / 0.54)
    assert torch.allclose(aggregated, tensor([[0.7, 0.3]]))


def test_the_instance_consistency_loss_is_the_cross_entropy_over_bank_rows():
    # log softmax([1, 0]) = [-0.313262, -1.313262]; 0.75 * 0.313262 + 0.25 * 1.313262 = 0.563262
    loss = instance_consistency_loss(tensor([[1.0, 0.0]]), torch.eye(2), tensor([[0.75, 0.25]]),
                                     T=1.0)
    assert torch.allclose(loss, torch.tensor(0.563262), atol=1e-6)


def test_bank_rows_are_normalised_across_the_batch_as_semilearn_or_per_sample():
    old, new = torch.eye(2), tensor([[0.0, 1.0], [0.0, 1.0]])
    # m = 0.5: mixed [[.5, .5], [0, 1]]
    per_sample = updated_bank_rows(old, new, 0.5, "per_sample")
    assert torch.allclose(per_sample, tensor([[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]]))
    # across the batch: column 0 [.5, 0] / .5, column 1 [.5, 1] / 1.118034
    across = updated_bank_rows(old, new, 0.5, "across_batch")
    assert torch.allclose(across, tensor([[1.0, 0.447214], [0.0, 0.894427]]), atol=1e-6)
    assert torch.allclose(across[0].norm(), torch.tensor(1.095445), atol=1e-6)   # not unit


# ---- SimMatch's step -----------------------------------------------------------------------------
def simmatch(**params):
    algorithm = make("simmatch", tau=0.75, T=0.5, projection_dim=2, alignment_batches=1,
                     similarity_start_step=1, **params)
    algorithm.bank.rows, algorithm.bank_labels.rows = torch.eye(2), torch.tensor([0, 1])
    algorithm.bank_drawn = True
    return algorithm


def simmatch_batch():
    # labeled [0, 3], [3, 0] with labels 1, 0 at bank rows 0, 1 (CE ln(1 + e^-3) each); weak probs
    # [[.8, .2], [.2, .8]] (alignment leaves them); strong logits [[2, 0], [0, 2]] (projections e1, e2)
    return batch([[0.0, 3.0], [3.0, 0.0]], [1, 0], [0, 1], [[LN4, 0.0], [0.0, LN4]],
                 [[2.0, 0.0], [0.0, 2.0]])


def test_simmatch_first_epoch_uses_the_weak_probabilities_and_no_instance_loss():
    output = step(simmatch(), Retaining(), simmatch_batch(), at=0)
    sup = math.log(1 + math.exp(-3))
    # targets p: H([.8, .2], softmax([2, 0])) = L + 0.4; the instance term weighs 0
    assert torch.allclose(output.stats["loss_unsup"], torch.tensor(L + 0.4))
    assert torch.allclose(output.loss, torch.tensor(sup + L + 0.4))
    assert output.stats["loss_instance"] > 0


def test_a_simmatch_step_by_hand_after_the_first_epoch():
    algorithm = simmatch()
    output = step(algorithm, Retaining(), simmatch_batch(), at=1)
    a = 1 / (1 + math.exp(-2))   # softmax([e1 . e1, e1 . e2] / 0.5)[0] = 0.880797
    # targets 0.9 [.8, .2] + 0.1 [a, 1 - a] (bank labels 0, 1); H(t, softmax([2, 0])) = L + 2 t[1]
    target_1 = 0.9 * 0.2 + 0.1 * (1 - a)
    assert torch.allclose(output.stats["loss_unsup"], torch.tensor(L + 2 * target_1))
    # teacher [a .8, (1 - a) .2] normalised; student log softmax([2, 0]) = [-L, -(2 + L)]
    teacher_1 = (1 - a) * 0.2 / (a * 0.8 + (1 - a) * 0.2)
    assert torch.allclose(output.stats["loss_instance"], torch.tensor(L + 2 * teacher_1))
    sup = math.log(1 + math.exp(-3))
    assert torch.allclose(output.loss, torch.tensor(sup + L + 2 * target_1 + L + 2 * teacher_1))
    # the bank: rows 0, 1 <- normalised across the batch (0.7 e1 + 0.3 e2, 0.7 e2 + 0.3 e1), the
    # labels of the batch's labeled samples
    expected = updated_bank_rows(torch.eye(2), tensor([[0.0, 1.0], [1.0, 0.0]]), 0.7,
                                 "across_batch")
    assert torch.allclose(algorithm.bank.rows, expected)
    assert algorithm.bank_labels.rows.tolist() == [1, 0]


def test_simmatch_gradients_reach_the_strong_view_only_and_never_the_bank():
    algorithm, network = simmatch(), Retaining()
    output = step(algorithm, network, simmatch_batch(), at=1)
    output.loss.backward()
    logits, proj = network.outputs[-1].logits.grad, network.outputs[-1].heads["proj"].grad
    rows = lambda grad: [g > 0 for g in grad.abs().sum(dim=1).tolist()]
    # rows: labeled x 2, weak x 2, strong x 2
    assert rows(logits) == [True, True, False, False, True, True]
    assert rows(proj) == [False, False, False, False, True, True]
    for bank in (algorithm.bank, algorithm.bank_labels, algorithm.alignment.batch_means):
        assert not bank.rows.requires_grad and bank.rows.grad_fn is None
    # in the first epoch the projections get no gradient at all
    network = Retaining()
    step(simmatch(), network, simmatch_batch(), at=0).loss.backward()
    assert network.outputs[-1].heads["proj"].grad.abs().sum() == 0


def test_simmatch_draws_its_initial_bank_from_the_step_generator():
    algorithm = make("simmatch", num_labeled=3, projection_dim=2)
    assert not algorithm.bank_drawn
    step(algorithm, Retaining(), simmatch_batch(), generator=torch.Generator().manual_seed(3))
    # unit Gaussian rows from the step's generator; the batch then wrote rows 0 and 1
    drawn = F.normalize(torch.randn((3, 2), generator=torch.Generator().manual_seed(3)), dim=1)
    assert algorithm.bank_drawn and torch.equal(algorithm.bank.rows[2], drawn[2])
    assert not torch.equal(algorithm.bank.rows[:2], drawn[:2])
    state = algorithm.state_dict()
    algorithm.draw_bank(torch.Generator().manual_seed(4))   # drawn once: a resumed run keeps it
    assert torch.equal(algorithm.bank.rows, state["bank"]["rows"])


def test_simmatch_refuses_an_unknown_bank_normalisation():
    with pytest.raises(ValueError, match="bank_normalisation"):
        make("simmatch", bank_normalisation="columns")


# ---- the references' keys ------------------------------------------------------------------------
@pytest.mark.parametrize("name, key, reason", [("simmatch", "K", "one row per labeled sample"),
                                               ("comatch", "hard_label", "never read")])
def test_keys_copied_from_usb_that_mean_nothing_here_are_refused_with_the_reason(name, key, reason):
    config = copy.deepcopy(default_params())
    config["algorithms"][name][key] = 40
    with pytest.raises(ConfigError) as caught:
        validate(config)
    assert f"algorithms.{name}.{key}" in str(caught.value) and reason in str(caught.value)


# ---- a short fit on digits -----------------------------------------------------------------------
@pytest.mark.parametrize("name, params", [("comatch", {"smoothing_start_step": 20}),
                                          ("simmatch", {"similarity_start_step": 20})])
def test_a_short_fit_on_digits_beats_chance(digits, name, params):
    spec, data = digits
    options = default_train_options("digits", steps=80, batch_size=16, uratio=2, eval_every=80,
                                     log_every=20, checkpoint_every=80, last_k=1)
    split = make_split(data.train_labels.numpy(), 50, 10, 0, "digits")
    train_data = image_train_data(
        replace(data, test_images=data.test_images[:300], test_labels=data.test_labels[:300]),
        torch.tensor(split["labeled_indices"]), spec.inputs, image_augment(options), False,
        torch.device("cpu"))
    torch.manual_seed(0)
    network = build_network("small_cnn", 10, spec.inputs, width=8, bn_momentum=0.01)
    algorithm = build_algorithm(name, {**PUBLISHED[name], **params},
                                facts=train_data.facts(10), total_steps=80)
    result = Trainer(network, algorithm, train_data, train_config(options), 0,
                     torch.device("cpu")).fit()
    assert result.metrics["raw/last_error"] < 80.0
    assert all(math.isfinite(row["train/loss"]) for row in result.stat_history)


# ---- CUDA: no host synchronisation with every part on ---------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, params", [("comatch", {"smoothing_start_step": 0,
                                                       "queue_batches": 1}),
                                          ("simmatch", {"similarity_start_step": 0})])
def test_a_step_with_smoothing_and_similarities_on_reads_nothing_back_on_cuda(name, params):
    cuda = torch.device("cuda")
    algorithm = make(name, num_labeled=4, num_classes=3, **params).to(cuda)
    network = Network(Inputs(), nn.Linear(2, 3), algorithm.heads(2)).to(cuda)
    generator = torch.Generator(cuda).manual_seed(0)
    views = len(algorithm.views.unlabeled)

    def cuda_batch():
        images = lambda n: torch.randn(n, 2, generator=generator, device=cuda)
        labels = torch.randint(0, 3, (8,), generator=generator, device=cuda)
        return StepBatch(Side([images(8)], labels, labels.clone() % 4),
                         Side([images(16) for _ in range(views)], labels.repeat(2),
                              torch.arange(16, device=cuda)))

    for at in range(3):   # the first steps size the memory and draw the bank
        step(algorithm, network, cuda_batch(), at=at, generator=generator).loss.backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for at in range(3, 6):
            step(algorithm, network, cuda_batch(), at=at, generator=generator).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
