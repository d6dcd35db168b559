"""The contract between the trainer, the algorithms and the data layer (semisup.algorithms.base):
declared views, heads that train, are averaged and are checkpointed, a seeded step generator and
components whose state checkpoints carry without hand-written code, input types of every
modality. A probe algorithm (not registered) uses every part at once."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semisup.algorithms import Algorithm, StepBatch, StepContext, StepOutput, Views, build_algorithm
from semisup.algorithms.base import forward_outputs, forward_views, supervised_loss
from semisup.algorithms.components import DistributionAlignment, FeatureQueue, MemoryBank
from semisup.data.image import image_train_data
from semisup.data.inputs import TokenBatch, WaveBatch, batch_size, cat_inputs, split_inputs
from semisup.data.modality import DataFacts
from semisup.data.splits import make_split
from semisup.models import Network, build_network
from semisup.train import Trainer

from pipeline.config import default_params, default_train_options
from pipeline.runs.train import image_augment, train_config

CPU = torch.device("cpu")
OPTIONS = default_train_options("digits", steps=8, batch_size=4, uratio=2, eval_every=4,
                                log_every=2, checkpoint_every=3, last_k=2, ema_decay=0.9)


class Probe(Algorithm):
    """Every part of the contract in one step: two labeled and three unlabeled views, a head, a
    queue and a memory bank, random draws from the step's generators (a MixUp-like lambda on the
    host, noise on the device, a VAT-like direction found with torch.autograd.grad)."""

    name = "probe"
    views = Views(labeled=("weak", "strong"), unlabeled=("weak", "strong", "strong"))

    def __init__(self, **base):
        super().__init__(**base)
        self.queue = FeatureQueue(6, 5)
        self.bank = MemoryBank(self.num_labeled, 5)
        self.lambdas: list[float] = []

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        return {"proj": nn.Linear(num_features, 5)}

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb, x_lb_strong), (x_w, x_s1, x_s2) = batch.labeled.views, batch.unlabeled.views
        out_lb, _, out_w, out_s1, out_s2 = forward_outputs(ctx.network, x_lb, x_lb_strong, x_w,
                                                           x_s1, x_s2, want=("proj",))
        lam = torch.rand((), generator=ctx.host_generator)   # a scalar drawn on the host
        noise = torch.rand(out_w.logits.shape, generator=ctx.generator)
        mixed = lam * out_s1.heads["proj"] + (1 - lam) * out_s2.heads["proj"]
        consistency = F.mse_loss(mixed, out_w.heads["proj"].detach()) + 1e-3 * (
            out_w.logits * noise).mean()
        direction = torch.randn(x_w.shape, generator=ctx.generator).requires_grad_()
        logits_w = out_w.logits.detach()
        perturbed = ctx.network(x_w + 1e-2 * direction).logits
        divergence = F.kl_div(F.log_softmax(perturbed, -1), F.softmax(logits_w, -1),
                              reduction="batchmean")
        (gradient,) = torch.autograd.grad(divergence, direction)
        adversarial = ctx.network(x_w + 0.1 * F.normalize(gradient.flatten(1), dim=1)
                                  .view_as(x_w)).logits
        vat = F.kl_div(F.log_softmax(adversarial, -1), F.softmax(logits_w, -1),
                       reduction="batchmean")
        self.queue.push(out_w.heads["proj"])
        self.bank.update(batch.labeled.indices, out_lb.heads["proj"])
        loss_sup = supervised_loss(out_lb.logits, batch.labeled.labels)
        return StepOutput(loss_sup + consistency + vat, {"lambda": lam.detach()})


def trainer_for(digits, make_algorithm, checkpoint=None, log=lambda step, metrics: None,
                config=None) -> Trainer:
    spec, data = digits
    split = make_split(data.train_labels.numpy(), 20, 10, 0, "digits")
    train_data = image_train_data(
        replace(data, test_images=data.test_images[:32], test_labels=data.test_labels[:32]),
        torch.tensor(split["labeled_indices"]), spec.inputs, image_augment(OPTIONS), False, CPU)
    torch.manual_seed(0)
    network = build_network("small_cnn", 10, spec.inputs, width=4, bn_momentum=0.01)
    config = config or train_config(OPTIONS)
    algorithm = make_algorithm(facts=train_data.facts(10), total_steps=config.steps)
    return Trainer(network, algorithm, train_data, config, 0, CPU, log=log,
                   checkpoint_path=checkpoint)


class Killed(Exception):
    pass


def kill_at(step_to_die: int):
    def log(step, metrics):
        if step >= step_to_die:
            raise Killed(step)
    return log


# ---- views ----------------------------------------------------------------------------------------
def test_each_side_gets_the_views_it_declares_in_order_from_the_augment_stream(digits):
    trainer = trainer_for(digits, Probe)
    state = trainer.augment_generator.get_state()
    batch = trainer.next_batch()
    assert [view.shape for view in batch.labeled.views] == [(4, 1, 8, 8)] * 2
    assert [view.shape for view in batch.unlabeled.views] == [(8, 1, 8, 8)] * 3
    # positions in the labeled set (a memory bank's rows), indices of the unlabeled set
    assert batch.labeled.indices.max() < 20 and len(batch.unlabeled.indices) == 8
    # the two strong views are independent draws
    assert not torch.equal(batch.unlabeled.views[1], batch.unlabeled.views[2])
    # made in the declared order from the augment stream: the data layer gives the same views
    replay = torch.Generator().manual_seed(0)
    replay.set_state(state)
    modality, data = trainer.data.modality, trainer.data
    labeled = modality.views("train", data.labeled_indices[batch.labeled.indices],
                             ("weak", "strong"), replay)
    unlabeled = modality.views("unlabeled", batch.unlabeled.indices, ("weak", "strong", "strong"),
                               replay)
    assert all(torch.equal(a, b) for a, b in zip(labeled + unlabeled,
                                                 batch.labeled.views + batch.unlabeled.views,
                                                 strict=True))


def test_an_algorithm_that_declares_no_unlabeled_view_draws_no_unlabeled_batch(digits):
    trainer = trainer_for(digits, lambda **base: build_algorithm("supervised", {}, **base))
    before = trainer.unlabeled_sampler.state_dict()
    batch = trainer.next_batch()
    assert batch.unlabeled is None and len(batch.labeled.views) == 1
    assert torch.equal(trainer.unlabeled_sampler.state_dict()["order"], before["order"])


def test_a_view_kind_the_data_layer_does_not_make_is_refused(digits):
    trainer = trainer_for(digits, Probe)
    with pytest.raises(ValueError, match="makes the views weak, strong, not rotated"):
        trainer.data.modality.views("train", torch.arange(2), ("weak", "rotated"),
                                    trainer.augment_generator)


# ---- heads, step generator, components: trained, averaged, checkpointed, resumed -------------------
def test_heads_train_are_averaged_by_the_ema_and_are_checkpointed(digits, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    trainer = trainer_for(digits, Probe, checkpoint)
    head = trainer.network.heads["proj"]
    initial = head.weight.detach().clone()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(head.weight) in optimized and id(head.bias) in optimized
    trainer.fit()
    ema_head = trainer.ema_network.heads["proj"].weight
    assert not torch.equal(head.weight, initial)                       # trained
    assert not torch.equal(ema_head, initial) and not torch.equal(ema_head, head.weight)  # averaged
    saved = torch.load(checkpoint, weights_only=False)
    assert torch.equal(saved["network"]["heads.proj.weight"], head.weight)
    assert torch.equal(saved["ema_network"]["heads.proj.weight"], ema_head)
    # the components' state is in the checkpoint without any code of the probe's own
    assert set(saved["algorithm"]) == {"queue", "bank"}
    assert saved["algorithm"]["queue"]["count"] == 8 * 6   # 8 steps, the last 6 of 8 samples
    assert saved["algorithm"]["bank"]["rows"].abs().sum() > 0


def test_a_run_that_draws_from_the_step_generator_resumes_bit_for_bit(digits, tmp_path):
    straight = trainer_for(digits, Probe)
    uninterrupted = straight.fit()
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        trainer_for(digits, Probe, checkpoint, log=kill_at(5)).fit()
    resumed_trainer = trainer_for(digits, Probe, checkpoint)
    resumed = resumed_trainer.fit()
    assert resumed.resumed_from == 3
    for field in ("metrics", "curve", "stat_history"):
        assert json.dumps(getattr(resumed, field)) == json.dumps(getattr(uninterrupted, field))
    # the lambdas drawn after the resume are the uninterrupted run's: the stream was restored
    assert [row["train/lambda"] for row in resumed.stat_history] == \
        [row["train/lambda"] for row in uninterrupted.stat_history]
    for key in ("queue", "bank"):
        assert torch.equal(getattr(resumed_trainer.algorithm, key).rows,
                           getattr(straight.algorithm, key).rows)


def test_the_step_generators_are_streams_of_their_own(digits):
    """A step's random draws come from streams of their own: an algorithm that draws does not
    change the augmentation or the data order of the run."""
    trainer = trainer_for(digits, Probe)
    others = {trainer.augment_generator.initial_seed(), *(
        sampler.generator.initial_seed() for sampler in (trainer.labeled_sampler,
                                                         trainer.unlabeled_sampler))}
    own = {trainer.step_generator.initial_seed(), trainer.host_generator.initial_seed()}
    assert len(own) == 2 and not own & others
    assert trainer.host_generator.device.type == "cpu"


class EveryLabel(Algorithm):
    """The fully supervised upper bound's data: every training sample with its label."""

    name = "every_label"
    views = Views(labeled=("weak",), unlabeled=())
    labeled_set = "all"

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,) = batch.labeled.views
        return StepOutput(supervised_loss(ctx.network(x_lb).logits, batch.labeled.labels))


def test_an_algorithm_can_train_on_every_training_label(digits):
    trainer = trainer_for(digits, EveryLabel)
    num_train = len(digits[1].train_labels)
    assert torch.equal(trainer.data.labeled_indices, torch.arange(num_train))
    assert trainer.data.facts(10).num_labeled == num_train   # the split has 20
    seen = set()
    for _ in range(num_train // 4):
        seen.update(trainer.next_batch().labeled.indices.tolist())
    assert max(seen) >= 20 and len(seen) == num_train   # an epoch visits every sample once


def test_dash_usb_is_evaluated_at_the_end_of_its_warmup_whatever_eval_every_is(digits):
    params = {**default_params()["algorithms"]["dash"], "variant": "usb", "warmup_steps": 3,
              "steps_per_epoch": 2}
    trainer = trainer_for(digits, lambda **base: build_algorithm("dash", params, **base))
    result = trainer.fit()   # eval_every 4: evaluations at 4 and 8, and at 3 for Dash
    assert [point["step"] for point in result.curve] == [3.0, 4.0, 8.0]
    assert trainer.algorithm.rho_hat == result.curve[0]["ema/loss"]


# ---- components ---------------------------------------------------------------------------------
def test_a_feature_queue_keeps_the_most_recent_rows():
    queue = FeatureQueue(4, 2)
    queue.push(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert torch.equal(queue.filled(), torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    queue.push(torch.tensor([[4.0, 4.0], [5.0, 5.0]]))   # wraps: 5 overwrites the oldest, 1
    assert queue.filled()[:, 0].tolist() == [5.0, 2.0, 3.0, 4.0] and queue.count == 5
    queue.push(torch.arange(12.0).view(6, 2))            # more than fit: the last four
    assert sorted(queue.filled()[:, 0].tolist()) == [4.0, 6.0, 8.0, 10.0] and queue.count == 9


def test_a_memory_bank_row_written_twice_in_one_batch_keeps_the_later_row():
    bank = MemoryBank(3, 2)
    bank.update(torch.tensor([2, 0, 2]), torch.tensor([[1.0, 1.0], [7.0, 7.0], [9.0, 9.0]]))
    assert bank.rows.tolist() == [[7.0, 7.0], [0.0, 0.0], [9.0, 9.0]]


def test_distribution_alignment_starts_at_the_first_batch_then_averages():
    alignment = DistributionAlignment(2, momentum=0.9, target=torch.tensor([0.5, 0.5]))
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    aligned = alignment(probs)
    assert torch.allclose(alignment.p_model, torch.tensor([0.7, 0.3]))
    # p * (0.5 / 0.7, 0.5 / 0.3), renormalised: [0.8/0.7, 0.2/0.3] / sum
    first = torch.tensor([0.8 / 0.7, 0.2 / 0.3])
    assert torch.allclose(aligned[0], first / first.sum(), atol=1e-5)
    alignment.update(torch.tensor([[0.2, 0.8]]))
    assert torch.allclose(alignment.p_model, 0.9 * torch.tensor([0.7, 0.3])
                          + 0.1 * torch.tensor([0.2, 0.8]))


def test_an_algorithms_components_are_saved_loaded_and_moved_without_code_of_its_own():
    facts = DataFacts(num_classes=3, num_labeled=4, num_unlabeled=8, labeled_class_counts=(2, 1, 1))
    probe = Probe(facts=facts, total_steps=10)
    probe.queue.push(torch.ones(2, 5))
    probe.bank.update(torch.tensor([1]), torch.full((1, 5), 3.0))
    state = probe.state_dict()
    fresh = Probe(facts=facts, total_steps=10)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue.rows, probe.queue.rows) and fresh.queue.count == 2
    assert torch.equal(fresh.bank.rows, probe.bank.rows)
    with pytest.raises(KeyError, match="lacks"):
        fresh.load_state_dict({"queue": state["queue"]})
    fresh.to("meta")
    assert fresh.queue.rows.device.type == "meta" and fresh.bank.rows.device.type == "meta"


# ---- every modality's inputs ----------------------------------------------------------------------
def test_token_and_wave_batches_are_joined_with_padding_and_split_back():
    short = TokenBatch(torch.tensor([[5, 6]]), torch.tensor([[1, 1]]))
    long = TokenBatch(torch.tensor([[7, 8, 9], [1, 2, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
    joined = cat_inputs([short, long])
    assert joined.ids.tolist() == [[5, 6, 0], [7, 8, 9], [1, 2, 0]]
    assert joined.mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0]]
    first, second = split_inputs(joined, [1, 2])
    assert batch_size(first) == 1 and torch.equal(second.ids, long.ids)
    waves = cat_inputs([WaveBatch(torch.ones(1, 4), torch.ones(1, 4)),
                        WaveBatch(torch.ones(1, 2), torch.ones(1, 2))])
    assert waves.mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]] and waves.waveform[1, 3] == 0
    with pytest.raises(TypeError, match="different types"):
        cat_inputs([short, torch.zeros(1, 3)])


class BagOfTokens(nn.Module):
    """A text backbone: the mean embedding of the real tokens."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(20, self.num_features)

    def forward(self, tokens: TokenBatch):
        mask = tokens.mask.unsqueeze(-1).float()
        return (self.embedding(tokens.ids) * mask).sum(1) / mask.sum(1).clamp(min=1)


def test_an_algorithm_runs_unchanged_on_token_batches():
    """FixMatch's step on text: nothing in it names an image."""
    torch.manual_seed(0)
    network = Network(BagOfTokens(), nn.Linear(6, 3))
    facts = DataFacts(num_classes=3, num_labeled=2, num_unlabeled=4, labeled_class_counts=(1, 1, 0))
    fixmatch = build_algorithm("fixmatch", {"tau": 0.0, "lambda_u": 1.0}, facts=facts,
                               total_steps=10)
    tokens = lambda n, length: TokenBatch(torch.randint(1, 20, (n, length)),
                                          torch.ones(n, length, dtype=torch.long))
    from semisup.algorithms import Side
    batch = StepBatch(labeled=Side([tokens(2, 5)], torch.tensor([0, 1]), torch.arange(2)),
                      unlabeled=Side([tokens(4, 7), tokens(4, 9)], torch.tensor([0, 1, 2, 0]),
                                     torch.arange(4)))
    output = fixmatch.training_step(StepContext(network, 0, torch.Generator()), batch)
    output.loss.backward()
    assert torch.isfinite(output.loss) and output.stats["mask_rate"] == 1.0
    assert network.backbone.embedding.weight.grad.abs().sum() > 0
    logits = forward_views(network, tokens(2, 3), tokens(1, 8))
    assert [tuple(x.shape) for x in logits] == [(2, 3), (1, 3)]


def test_features_go_back_in_through_the_classifier_and_heads_alone():
    """semilearn's only_feat then only_fc (MixUp of features): the backbone is skipped."""
    torch.manual_seed(0)
    network = Network(BagOfTokens(), nn.Linear(6, 3), {"proj": nn.Linear(6, 2)})
    tokens = TokenBatch(torch.randint(1, 20, (4, 5)), torch.ones(4, 5, dtype=torch.long))
    output = network(tokens, want=("proj",))
    calls = []
    network.backbone.register_forward_hook(lambda m, args, out: calls.append(1))
    again = network(output.features, want=("proj",), from_features=True)
    assert calls == []
    assert torch.equal(again.logits, output.logits) and torch.equal(again.features, output.features)
    assert torch.equal(again.heads["proj"], output.heads["proj"])


def test_only_a_backbone_that_has_them_returns_its_input_embeddings():
    network = Network(BagOfTokens(), nn.Linear(6, 3))
    tokens = TokenBatch(torch.randint(1, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="cannot return its input embeddings"):
        network(tokens, want=("input_embeddings",))
