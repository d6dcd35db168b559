"""semisup.optim.SGD against torch.optim.SGD (the update the references use): the same
parameters, bit for bit, over a cosine schedule, with weight decay groups, Nesterov or plain
momentum, CPU foreach and per-tensor paths; and a state round-trip resumes exactly."""
import copy
import math
import subprocess
import sys

import pytest
import torch

from semisup.models import build_model
from semisup.optim import SGD, sgd_without_decay_on_norms_and_biases


def run_steps(model, optimizer, set_lr, steps, total, generator):
    for step in steps:
        images = torch.randn(8, 1, 8, 8, generator=generator)
        labels = torch.randint(0, 10, (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        set_lr(optimizer, 0.1 * math.cos(7 * math.pi * step / (16 * total)))
        optimizer.step()


def train(model, make_optimizer, set_lr, steps=12, seed=0):
    optimizer = make_optimizer(model)
    run_steps(model, optimizer, set_lr, range(steps), steps, torch.Generator().manual_seed(seed))
    return model, optimizer


def torch_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def ours_lr(optimizer, lr):
    optimizer.lr = lr


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("foreach", [True, False])
def test_matches_torch_sgd_bit_for_bit(nesterov, foreach):
    torch.manual_seed(0)
    start = build_model("small_cnn", 10, 1, width=8, bn_momentum=0.01)

    def reference(model):
        groups = [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": 5e-4},
                  {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=nesterov, foreach=foreach)

    def ours(model):
        return sgd_without_decay_on_norms_and_biases(model, 0.1, 5e-4, 0.9, nesterov)

    expected, _ = train(copy.deepcopy(start), reference, torch_lr)
    actual, _ = train(copy.deepcopy(start), ours, ours_lr)
    for (name, want), got in zip(expected.state_dict().items(), actual.state_dict().values(), strict=True):
        assert torch.equal(want, got), name
    # and it moved: the parameters differ from the start
    assert not torch.equal(start.classifier.weight, actual.classifier.weight)


def test_parameters_without_gradient_are_left_alone_as_torch_does():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = SGD([([a, b], 0.1)], lr=0.5)
    a.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(b, torch.ones(3)) and not torch.equal(a, torch.ones(3))
    b.grad = torch.ones(3)   # b's first step starts its momentum buffer then
    optimizer.step()
    assert optimizer.buffers[0][1] is not None


def test_state_round_trip_continues_exactly():
    torch.manual_seed(1)
    start = build_model("small_cnn", 10, 1, width=8, bn_momentum=0.01)
    make = lambda model: sgd_without_decay_on_norms_and_biases(model, 0.1, 5e-4, 0.9, True)
    straight, _ = train(copy.deepcopy(start), make, ours_lr, steps=6)
    generator = torch.Generator().manual_seed(0)
    model = copy.deepcopy(start)
    first = make(model)
    run_steps(model, first, ours_lr, range(3), 6, generator)
    resumed = make(model)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    run_steps(model, resumed, ours_lr, range(3, 6), 6, generator)
    for want, got in zip(straight.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(want, got)


def test_mismatched_state_is_refused():
    model = build_model("small_cnn", 10, 1, width=8, bn_momentum=0.01)
    optimizer = sgd_without_decay_on_norms_and_biases(model, 0.1, 5e-4, 0.9, True)
    other = sgd_without_decay_on_norms_and_biases(build_model("small_cnn", 10, 1, width=16, bn_momentum=0.01),
                                                  0.1, 5e-4, 0.9, True)
    optimizer.buffers = [[torch.zeros(p.shape) for p in params] for params, _ in optimizer.groups]
    with pytest.raises(ValueError, match="momentum buffer"):
        other.load_state_dict(optimizer.state_dict())


def test_training_does_not_import_dynamo():
    """The reason semisup has its own SGD: torch.optim imports torch._dynamo (~1 s per job)."""
    code = ("import sys, torch; from semisup.models import build_model; "
            "from semisup.optim import sgd_without_decay_on_norms_and_biases as make; "
            "m = build_model('small_cnn', 10, 1, width=8, bn_momentum=0.01); "
            "o = make(m, 0.1, 5e-4, 0.9, True); "
            "m(torch.randn(2, 1, 8, 8)).sum().backward(); o.step(); "
            "print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
