"""SGD with (Nesterov) momentum and per-group weight decay: the update of torch.optim.SGD, bit for
bit, in a few lines.

Why not torch.optim.SGD: its first call imports torch._dynamo (about 1 s of CPU per process).
A default-study job trains for about 3 s, so that import alone cost 10 % of every job. The
update uses the multi-tensor `torch._foreach_*` kernels that torch.optim.SGD uses on CUDA
(one launch per op for all parameters); tests/test_optim.py checks it against torch.optim.SGD.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class SGD:
    """params_groups: [(parameters, weight_decay), ...]; `lr` is set by the caller each step."""

    def __init__(self, param_groups: list[tuple[list[Tensor], float]], lr: float,
                 momentum: float = 0.9, nesterov: bool = True):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.groups = [(list(params), float(decay)) for params, decay in param_groups if params]
        self.lr, self.momentum, self.nesterov = float(lr), float(momentum), nesterov
        self.buffers: list[list[Tensor]] | None = None   # momentum buffers, made on the first step

    @torch.no_grad()
    def step(self) -> None:
        if self.buffers is None:
            self.buffers = [[None] * len(params) for params, _ in self.groups]
        for (params, decay), buffers in zip(self.groups, self.buffers, strict=True):
            active = [i for i, p in enumerate(params) if p.grad is not None]   # as torch: skip
            if not active:                                                     # grad-less ones
                continue
            params_now = [params[i] for i in active]
            grads = [p.grad for p in params_now]
            if decay != 0:
                grads = torch._foreach_add(grads, params_now, alpha=decay)
            if self.momentum != 0:
                old = [i for i, g in zip(active, grads, strict=True) if buffers[i] is not None]
                if old:
                    old_bufs = [buffers[i] for i in old]
                    torch._foreach_mul_(old_bufs, self.momentum)
                    torch._foreach_add_(old_bufs, [g for i, g in zip(active, grads, strict=True)
                                                   if buffers[i] is not None])
                for i, g in zip(active, grads, strict=True):
                    if buffers[i] is None:   # the first step of this parameter: buffer = grad
                        buffers[i] = g.detach().clone()
                bufs = [buffers[i] for i in active]
                grads = (torch._foreach_add(grads, bufs, alpha=self.momentum) if self.nesterov
                         else bufs)
            torch._foreach_add_(params_now, grads, alpha=-self.lr)

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum_buffers": self.buffers}

    def load_state_dict(self, state: dict) -> None:
        buffers = state["momentum_buffers"]
        if buffers is not None:
            if [len(group) for group in buffers] != [len(params) for params, _ in self.groups]:
                raise ValueError("the momentum buffers do not match the model's parameters")
            buffers = [[None if b is None else b.to(p.device) for b, p in zip(group, params, strict=True)]
                       for group, (params, _) in zip(buffers, self.groups, strict=True)]
            for group, (params, _) in zip(buffers, self.groups, strict=True):
                for b, p in zip(group, params, strict=True):
                    if b is not None and b.shape != p.shape:
                        raise ValueError(f"a momentum buffer of shape {tuple(b.shape)} does not "
                                         f"match its parameter's {tuple(p.shape)}")
        self.lr, self.buffers = state["lr"], buffers


def sgd_without_decay_on_norms_and_biases(model: nn.Module, lr: float, weight_decay: float,
                                          momentum: float, nesterov: bool) -> SGD:
    """The references' grouping: weight decay on weights only, none on BatchNorm and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    return SGD([(decay, weight_decay), (no_decay, 0.0)], lr, momentum, nesterov)
