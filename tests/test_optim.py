"""semisup.optim: SGD equals torch.optim.SGD bit for bit; AdamW with layer-wise lr decay and the
warm-up + cosine schedule equals torch.optim.AdamW with hand-written groups driven by LambdaLR
(semilearn's protocol); the schedule's values; weight decay spares biases, norms and the names a
backbone exempts; states round-trip exactly. Small hand-made networks shaped like
semisup.models.Network (backbone, classifier, heads)."""
import copy
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from semisup.optim import SGD, OptimizerConfig, build_optimizer, lr_factor


class TinyNetwork(nn.Module):
    """Network's shape: a backbone, a classifier, heads (trained through a squared output)."""

    def __init__(self, backbone: nn.Module, width: int, heads: tuple[str, ...] = ()):
        super().__init__()
        self.backbone, self.classifier = backbone, nn.Linear(width, 3)
        self.heads = nn.ModuleDict({name: nn.Linear(width, 2) for name in heads})

    def loss(self, inputs, labels):
        features = self.backbone(inputs.to(self.classifier.weight.dtype))
        extra = sum(head(features).pow(2).mean() for head in self.heads.values())
        return nn.functional.cross_entropy(self.classifier(features), labels) + extra


class Blocks(nn.Module):
    """A ViT in miniature: embeddings with a position embedding, two blocks, a final norm that
    counts with the last block (as timm's group_matcher puts it)."""
    num_layers = 3   # 0: embed, pos_embed; 1: blocks.0; 2: blocks.1, norm

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, 6))
        self.blocks = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        x = self.embed(x) + self.pos_embed
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return self.norm(x)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}   # a name it lacks is ignored, as timm's ViTs need

    def layer_id(self, name: str) -> int:
        if name.startswith(("embed.", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers - 1


def blocks_network(seed=0):
    torch.manual_seed(seed)
    return TinyNetwork(Blocks(), 6, heads=("proj",))


def conv_network(seed=0):
    """Conv without bias, BatchNorm, classifier: the grouping the CNN references use."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                             nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.BatchNorm2d(8),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TinyNetwork(backbone, 8)


def batches(network, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (8, 4) if isinstance(network.backbone, Blocks) else (8, 1, 8, 8)
    while True:
        yield torch.randn(shape, generator=generator), torch.randint(0, 3, (8,), generator=generator)


def train(network, optimizer, set_factor, steps, data, after_step=lambda: None):
    for step in steps:
        inputs, labels = next(data)
        optimizer.zero_grad()
        network.loss(inputs, labels).backward()
        set_factor(step)
        optimizer.step()
        after_step()


def assert_same_parameters(expected, actual):
    for (name, want), got in zip(expected.state_dict().items(), actual.state_dict().values(),
                                 strict=True):
        assert torch.equal(want, got), name


ADAMW = OptimizerConfig("adamw", lr=1e-2, weight_decay=0.05, momentum=0.0, nesterov=False,
                        layer_decay=0.65)
SGD_CONFIG = OptimizerConfig("sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True,
                             layer_decay=1.0)


def hand_written_groups(network, lr, weight_decay):
    """semilearn's groups for Blocks with layer_decay 0.65: lr 0.65 ** (3 - layer) * lr."""
    b, top = network.backbone, (network.classifier, network.heads["proj"])
    return [
        {"params": [b.embed.weight], "lr": 0.65 ** 3 * lr, "weight_decay": weight_decay},
        {"params": [b.embed.bias, b.pos_embed], "lr": 0.65 ** 3 * lr, "weight_decay": 0.0},
        {"params": [b.blocks[0].weight], "lr": 0.65 ** 2 * lr, "weight_decay": weight_decay},
        {"params": [b.blocks[0].bias], "lr": 0.65 ** 2 * lr, "weight_decay": 0.0},
        {"params": [b.blocks[1].weight], "lr": 0.65 * lr, "weight_decay": weight_decay},
        {"params": [b.blocks[1].bias, b.norm.weight, b.norm.bias], "lr": 0.65 * lr,
         "weight_decay": 0.0},
        {"params": [m.weight for m in top], "lr": lr, "weight_decay": weight_decay},
        {"params": [m.bias for m in top], "lr": lr, "weight_decay": 0.0}]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])   # float64: every lr bit counts
def test_layer_decay_and_warmup_cosine_equal_torch_with_hand_written_groups_and_lambda_lr(
        name, dtype):
    config = OptimizerConfig(name, 1e-2, 0.05, 0.9, True, layer_decay=0.65)
    start = blocks_network().to(dtype)
    expected, actual = copy.deepcopy(start), copy.deepcopy(start)
    groups = hand_written_groups(expected, config.lr, config.weight_decay)
    reference = (torch.optim.AdamW(groups) if name == "adamw"
                 else torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True))
    factor = lambda step: step / 4 if step < 4 else math.cos(7 * math.pi * (step - 4) / (16 * 6))
    scheduler = torch.optim.lr_scheduler.LambdaLR(reference, factor)   # sets factor(0) now
    train(expected, reference, lambda step: None, range(10), batches(expected),
          after_step=scheduler.step)   # as semilearn: the scheduler steps after each update

    ours = build_optimizer(actual, config)
    set_factor = lambda step: ours.set_lr_factor(lr_factor("cosine", step, 10, 4))
    train(actual, ours, set_factor, range(10), batches(actual))
    assert_same_parameters(expected, actual)
    assert not torch.equal(start.backbone.embed.weight, actual.backbone.embed.weight)


def test_lr_factor_at_hand_picked_steps():
    # 10 steps, 4 of warm-up: 0, 1/4, 2/4, 3/4, then cos(7 pi k / (16 * 6)) for k = 0 .. 5
    assert lr_factor("cosine", 0, 10, 4) == 0.0
    assert lr_factor("cosine", 2, 10, 4) == 0.5
    assert lr_factor("cosine", 3, 10, 4) == 0.75
    assert lr_factor("cosine", 4, 10, 4) == 1.0
    assert lr_factor("cosine", 9, 10, 4) == pytest.approx(0.41270703, abs=1e-8)   # cos(35 pi/96)


def semilearn_factor(step, total_steps, warmup_steps):
    """semilearn 0.3.2 get_cosine_schedule_with_warmup's _lr_lambda (num_cycles 7/16)."""
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    return max(0.0, math.cos(math.pi * (7.0 / 16.0) * progress))


def test_without_warmup_the_factor_is_todays_bits_and_semilearns_within_rounding():
    pairs = [(step, total) for total in (1, 7, 12, 1000, 1 << 20)
             for step in range(0, total, max(1, total // 997))]
    ours = [lr_factor("cosine", step, total, 0) for step, total in pairs]
    assert ours == [math.cos(7 * math.pi * step / (16 * total)) for step, total in pairs]
    semilearn = [semilearn_factor(step, total, 0) for step, total in pairs]
    assert ours != semilearn   # the reason for our formula: semilearn's rounds differently
    assert ours == pytest.approx(semilearn, abs=1e-15)


def test_with_warmup_the_factor_is_semilearns_within_rounding():
    for step in range(100):
        assert lr_factor("cosine", step, 100, 30) == pytest.approx(semilearn_factor(step, 100, 30),
                                                                   abs=1e-15)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_no_weight_decay_on_exempted_names_biases_and_norms(name):
    network = blocks_network()
    optimizer = build_optimizer(network, OptimizerConfig(name, 0.1, 0.05, 0.9, True, 0.65))
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups
             for p in group["params"]}
    decayed = {"backbone.embed.weight", "backbone.blocks.0.weight", "backbone.blocks.1.weight",
               "classifier.weight", "heads.proj.weight"}
    for parameter_name, p in network.named_parameters():
        assert decay[id(p)] == (0.05 if parameter_name in decayed else 0.0), parameter_name
    assert len(decay) == len(list(network.parameters()))


def test_layer_decay_without_layer_ids_is_refused():
    with pytest.raises(ValueError, match="num_layers` and `layer_id"):
        build_optimizer(conv_network(), OptimizerConfig("adamw", 1e-3, 0.05, 0.0, False, 0.75))


@pytest.mark.parametrize(("config", "message"), [
    (OptimizerConfig("adam", 1e-3, 0.05, 0.0, False, 1.0), "unknown optimizer 'adam'"),
    (OptimizerConfig("adamw", 1e-3, 0.05, 0.0, False, 1.5), r"must lie in \(0, 1\]")])
def test_bad_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(blocks_network(), config)


@pytest.mark.parametrize("config", [ADAMW, SGD_CONFIG])
def test_state_round_trip_resumes_exactly(config):
    set_factor = lambda optimizer: (lambda step: optimizer.set_lr_factor(
        lr_factor("cosine", step, 6, 2)))
    straight = blocks_network()
    optimizer = build_optimizer(straight, config)
    train(straight, optimizer, set_factor(optimizer), range(6), batches(straight))

    resumed = blocks_network()
    data = batches(resumed)
    first = build_optimizer(resumed, config)
    train(resumed, first, set_factor(first), range(3), data)
    second = build_optimizer(resumed, config)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    assert [g["lr"] for g in second.param_groups] == [g["lr"] for g in first.param_groups]
    train(resumed, second, set_factor(second), range(3, 6), data)
    assert_same_parameters(straight, resumed)


def torch_sgd(network, nesterov, foreach):
    groups = [{"params": [p for p in network.parameters() if p.dim() > 1], "weight_decay": 5e-4},
              {"params": [p for p in network.parameters() if p.dim() <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=nesterov, foreach=foreach)


def fixmatch_lr(step, steps=12):
    return 0.1 * math.cos(7 * math.pi * step / (16 * steps))


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("foreach", [True, False])
def test_sgd_matches_torch_sgd_bit_for_bit(nesterov, foreach):
    start = conv_network()
    expected, actual = copy.deepcopy(start), copy.deepcopy(start)
    reference = torch_sgd(expected, nesterov, foreach)

    def set_torch_lr(step):
        for group in reference.param_groups:
            group["lr"] = fixmatch_lr(step)
    train(expected, reference, set_torch_lr, range(12), batches(expected))

    # today's trainer: lr * cos(7 pi k / 16 K) with no warm-up, the same bits as torch's groups
    ours = build_optimizer(actual, OptimizerConfig("sgd", 0.1, 5e-4, 0.9, nesterov, 1.0))
    set_lr = lambda step: ours.set_lr_factor(lr_factor("cosine", step, 12, 0))
    train(actual, ours, set_lr, range(12), batches(actual))
    assert_same_parameters(expected, actual)
    assert not torch.equal(start.classifier.weight, actual.classifier.weight)


def test_parameters_without_gradient_are_left_alone_as_torch_does():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    optimizer = SGD([{"params": [a, b], "weight_decay": 0.1, "lr": 0.5}])
    a.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(b, torch.ones(3)) and not torch.equal(a, torch.ones(3))
    b.grad = torch.ones(3)   # b's first step starts its momentum buffer then
    optimizer.step()
    assert optimizer.buffers[0][1] is not None


def test_mismatched_state_is_refused():
    optimizer = build_optimizer(conv_network(), SGD_CONFIG)
    other = build_optimizer(TinyNetwork(nn.Sequential(nn.Flatten(), nn.Linear(64, 8)), 8), SGD_CONFIG)
    optimizer.buffers = [[torch.zeros(p.shape) for p in group["params"]]
                         for group in optimizer.param_groups]
    with pytest.raises(ValueError, match="momentum buffer"):
        other.load_state_dict(optimizer.state_dict())


def test_sgd_training_does_not_import_dynamo():
    """The reason semisup has its own SGD: torch.optim imports torch._dynamo (~1 s per job)."""
    code = ("import sys, torch; from semisup.optim import OptimizerConfig, build_optimizer; "
            "m = torch.nn.Module(); m.backbone = torch.nn.Linear(4, 4); "
            "m.classifier = torch.nn.Linear(4, 2); m.heads = torch.nn.ModuleDict(); "
            "o = build_optimizer(m, OptimizerConfig('sgd', 0.1, 5e-4, 0.9, True, 1.0)); "
            "m.classifier(m.backbone(torch.randn(2, 4))).sum().backward(); "
            "o.set_lr_factor(0.5); o.step(); print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
