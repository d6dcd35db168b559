"""Optimizers and learning-rate schedules, registered by name: OPTIMIZERS ("sgd", "adamw") and
SCHEDULES ("cosine"). The trainer calls

    optimizer = build_optimizer(network, OptimizerConfig(...))
    optimizer.set_lr_factor(lr_factor("cosine", step, total_steps, warmup_steps))   # each step
    optimizer.step()

Parameter groups (as semilearn 0.3.2, `core/utils/build.py` `get_optimizer` and
`nets/utils.py` `param_groups_weight_decay` / `param_groups_layer_decay`, from timm): weight
decay on parameters with more than one dimension, except those the backbone's
`no_weight_decay()` names; none on biases and norms. With layer-wise decay, one group per (layer,
decays or not) whose lr is `layer_decay ** (top - layer) * lr`, top = the classifier's layer.

Layers are the backbone's own: it defines `num_layers` and `layer_id(name)` for its parameter
names, 0 = embeddings ... num_layers - 1 = the last block; the classifier and heads (and what a
backbone puts there, layer_id == num_layers) are layer `num_layers`. semilearn numbers them with
timm's `group_matcher` regexes (there is no `get_layer_id_for_vit` in 0.3.2): stem 0, block i at
i + 1, everything unmatched with the head; its num_layers counts the head too (14 for a 12-block
net), so semilearn's `layer_max` is our `num_layers` and the exponents are the same.
  ViT (`nets/vit`): stem = cls_token, pos_embed, patch_embed; blocks.i -> i + 1; the final
    `norm` joins the last block (timm's MATCH_PREV_GROUP); head (and fc_norm) on top.
    no_weight_decay = {pos_embed, cls_token}.
  BERT: bert.embeddings -> 0; bert.encoder.layer.i -> i + 1; bert.pooler on top (unused).
  wav2vec2: model.feature_extractor, model.feature_projection -> 0; model.encoder.layers.i ->
    i + 1; model.encoder.pos_conv_embed, encoder.layer_norm and masked_spec_embed on top.
  HuBERT: as wav2vec2, but encoder.pos_conv_embed is in the stem (0).
  BERT, wav2vec2, HuBERT: no_weight_decay = [] (WRN, ResNet: their BatchNorms and biases, 1-d).
The schedule is semilearn's `get_cosine_schedule_with_warmup` (num_cycles 7/16) as LambdaLR
steps it after every update: factor(step) = step / warmup for step < warmup, then
cos(7/16 pi (step - warmup) / (total - warmup)). AdamW is torch.optim.AdamW with torch's
defaults (betas 0.9, 0.999; eps 1e-8), as semilearn.

Where this differs from semilearn, on purpose:
- The cosine is computed as `math.cos(7 * math.pi * k / (16 * K))` (k, K after the warm-up), not
  `math.cos(math.pi * (7/16) * (k / K))`: within an ulp or so, but with no warm-up these are the
  bits of FixMatch's schedule that the committed reports were trained with. No `max(0, .)`
  (the cosine stays positive up to step K) and `warmup_steps < total_steps` is required (semilearn
  guards its divisions with max(1, .)).
- The no-decay rule is one rule: dim <= 1 or named by `backbone.no_weight_decay()`. semilearn
  also exempts names ending ".bias" without layer decay (all its biases are 1-d) and exempts only
  ndim == 1 with it (a 0-d parameter would be decayed). It reads `no_weight_decay` from the module
  it is given, so in CoMatch, SimMatch, ReMixMatch and CRMatch, which wrap the net, a ViT's
  pos_embed and cls_token are decayed; here the backbone's list always holds.
- The learning rate is set by a factor (`set_lr_factor`), not a base lr: each group's lr =
  (its layer scale x lr) x factor, LambdaLR's order of operations, hence semilearn's bits; with a
  scale of 1.0 it is today's `lr * factor` too.
- layer_decay must lie in (0, 1] (semilearn asserts <= 1 only). Groups come in the order of
  their first parameter (semilearn without layer decay: not decayed first); the arithmetic is per
  parameter, so the order changes no number.

SGD is our own: torch.optim.SGD's first call imports torch._dynamo (about 1 s of CPU per process,
10 % of a default-study job). It uses the multi-tensor `torch._foreach_*` kernels that
torch.optim.SGD uses on CUDA; tests/test_optim.py checks it against torch.optim.SGD bit for bit.
AdamW jobs (pretrained backbones, hours long) pay that import: it is made only when asked for.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class OptimizerConfig:
    name: str            # a key of OPTIMIZERS: "sgd" | "adamw"
    lr: float            # the base learning rate (the top layer's, before the schedule)
    weight_decay: float
    momentum: float      # sgd only
    nesterov: bool       # sgd only
    layer_decay: float   # 1.0 = none; < 1 needs a backbone with `num_layers` and `layer_id`


class Optimizer(ABC):
    """What the trainer uses. `param_groups` is torch's layout: dicts with params, weight_decay,
    lr (this step's) and initial_lr (layer scale x base lr, fixed)."""
    param_groups: list[dict]

    def set_lr_factor(self, factor: float) -> None:
        """Each group's lr = its initial lr x factor: LambdaLR's arithmetic, so its bits."""
        for group in self.param_groups:
            group["lr"] = group["initial_lr"] * factor

    @abstractmethod
    def step(self) -> None: ...

    @abstractmethod
    def zero_grad(self) -> None: ...

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...


def with_initial_lr(group: dict) -> dict:
    return {**group, "params": list(group["params"]), "initial_lr": group["lr"]}


class SGD(Optimizer):
    """torch.optim.SGD's update (momentum, Nesterov, per-group lr and weight decay), bit for bit."""

    def __init__(self, param_groups: list[dict], momentum: float = 0.9, nesterov: bool = True):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.param_groups = [with_initial_lr(group) for group in param_groups if group["params"]]
        self.momentum, self.nesterov = float(momentum), nesterov
        self.buffers: list[list[Tensor]] | None = None   # momentum buffers, made on the first step

    @torch.no_grad()
    def step(self) -> None:
        if self.buffers is None:
            self.buffers = [[None] * len(group["params"]) for group in self.param_groups]
        for group, buffers in zip(self.param_groups, self.buffers, strict=True):
            params, decay = group["params"], float(group["weight_decay"])
            active = [i for i, p in enumerate(params) if p.grad is not None]   # as torch: skip
            if not active:                                                     # grad-less ones
                continue
            params_now = [params[i] for i in active]
            grads = [p.grad for p in params_now]
            if decay != 0:
                grads = torch._foreach_add(grads, params_now, alpha=decay)
            if self.momentum != 0:
                grads = self.momentum_step(grads, active, buffers)
            torch._foreach_add_(params_now, grads, alpha=-group["lr"])

    def momentum_step(self, grads: list[Tensor], active: list[int], buffers: list) -> list[Tensor]:
        old = [i for i in active if buffers[i] is not None]
        if old:
            old_bufs = [buffers[i] for i in old]
            torch._foreach_mul_(old_bufs, self.momentum)
            torch._foreach_add_(old_bufs, [g for i, g in zip(active, grads, strict=True)
                                           if buffers[i] is not None])
        for i, g in zip(active, grads, strict=True):
            if buffers[i] is None:   # the first step of this parameter: buffer = grad
                buffers[i] = g.detach().clone()
        bufs = [buffers[i] for i in active]
        return torch._foreach_add(grads, bufs, alpha=self.momentum) if self.nesterov else bufs

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_dict(self) -> dict:
        return {"lrs": [group["lr"] for group in self.param_groups],
                "momentum_buffers": self.buffers}

    def load_state_dict(self, state: dict) -> None:
        lrs, buffers = state["lrs"], state["momentum_buffers"]
        if len(lrs) != len(self.param_groups):
            raise ValueError(f"the optimizer state has {len(lrs)} parameter groups, this "
                             f"optimizer {len(self.param_groups)}: it was saved for another model")
        if buffers is not None:
            buffers = self.buffers_on_parameters(buffers)
        for group, lr in zip(self.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.buffers = buffers

    def buffers_on_parameters(self, buffers: list[list[Tensor | None]]) -> list[list[Tensor | None]]:
        groups = [group["params"] for group in self.param_groups]
        if [len(group) for group in buffers] != [len(params) for params in groups]:
            raise ValueError("the momentum buffers do not match the model's parameters")
        for group, params in zip(buffers, groups, strict=True):
            for b, p in zip(group, params, strict=True):
                if b is not None and b.shape != p.shape:
                    raise ValueError(f"a momentum buffer of shape {tuple(b.shape)} does not "
                                     f"match its parameter's {tuple(p.shape)}")
        return [[None if b is None else b.to(p.device) for b, p in zip(group, params, strict=True)]
                for group, params in zip(buffers, groups, strict=True)]


class AdamW(Optimizer):
    """torch.optim.AdamW with torch's default betas and eps, as semilearn."""

    def __init__(self, param_groups: list[dict]):
        from torch.optim import AdamW as TorchAdamW   # imports torch._dynamo: AdamW jobs only
        self.torch_optimizer = TorchAdamW([with_initial_lr(group) for group in param_groups])

    @property
    def param_groups(self) -> list[dict]:   # torch's load_state_dict replaces the list
        return self.torch_optimizer.param_groups

    def step(self) -> None:
        self.torch_optimizer.step()

    def zero_grad(self) -> None:
        self.torch_optimizer.zero_grad()

    def state_dict(self) -> dict:
        return self.torch_optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.torch_optimizer.load_state_dict(state)


def no_weight_decay_names(backbone: nn.Module) -> set[str]:
    """The backbone's own exemptions (timm ViTs: pos_embed, cls_token); names it lists that it
    does not have are ignored, as timm does (its ViTs list a dist_token most of them lack)."""
    return set(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else set()


def backbone_layers(backbone: nn.Module, layer_decay: float) -> tuple[dict[str, int], int]:
    """(layer of each backbone parameter, the top layer = backbone.num_layers)."""
    if layer_decay == 1.0:
        return {}, 0
    if not (hasattr(backbone, "num_layers") and callable(getattr(backbone, "layer_id", None))):
        raise ValueError(
            f"layer_decay = {layer_decay} needs a backbone that numbers its layers, but "
            f"{type(backbone).__name__} defines no `num_layers` and `layer_id(name)`; set "
            f"layer_decay to 1.0, or give the backbone both (0 = embeddings ... num_layers - 1 = "
            f"the last block)")
    top = backbone.num_layers
    layers = {}
    for name, _ in backbone.named_parameters():
        layer = backbone.layer_id(name)
        if not 0 <= layer <= top:
            raise ValueError(f"{type(backbone).__name__}.layer_id({name!r}) = {layer} is outside "
                             f"0 .. num_layers = {top}")
        layers[name] = layer
    return layers, top


def parameter_groups(network: nn.Module, config: OptimizerConfig) -> list[dict]:
    """One group per (layer, decayed or not), in the order of their first parameter."""
    exempt = {f"backbone.{name}" for name in no_weight_decay_names(network.backbone)}
    layers, top = backbone_layers(network.backbone, config.layer_decay)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        decays = param.dim() > 1 and name not in exempt
        layer = layers.get(name.removeprefix("backbone."), top)   # classifier, heads: top
        if (layer, decays) not in groups:
            scale = config.layer_decay ** (top - layer)   # exactly 1.0 without layer decay
            groups[layer, decays] = {"params": [], "lr": scale * config.lr,
                                     "weight_decay": config.weight_decay if decays else 0.0}
        groups[layer, decays]["params"].append(param)
    return list(groups.values())


def make_sgd(param_groups: list[dict], config: OptimizerConfig) -> Optimizer:
    return SGD(param_groups, config.momentum, config.nesterov)


def make_adamw(param_groups: list[dict], config: OptimizerConfig) -> Optimizer:
    return AdamW(param_groups)


OPTIMIZERS: dict[str, Callable[[list[dict], OptimizerConfig], Optimizer]] = {
    "sgd": make_sgd, "adamw": make_adamw}


def build_optimizer(network: nn.Module, config: OptimizerConfig) -> Optimizer:
    """The optimizer of `network` (backbone, classifier, heads); call set_lr_factor before step."""
    if config.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.name!r}; registered: {sorted(OPTIMIZERS)}")
    if not 0 < config.layer_decay <= 1:
        raise ValueError(f"layer_decay = {config.layer_decay} must lie in (0, 1]; 1.0 = none")
    return OPTIMIZERS[config.name](parameter_groups(network, config), config)


def cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from 0, then FixMatch's cos(7 pi k / 16 K) over the remaining K steps."""
    if step < warmup_steps:
        return step / warmup_steps
    return math.cos(7 * math.pi * (step - warmup_steps) / (16 * (total_steps - warmup_steps)))


SCHEDULES: dict[str, Callable[[int, int, int], float]] = {"cosine": cosine}


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The factor of the base lr at `step` (0-based; the value used by that step's update)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; registered: {sorted(SCHEDULES)}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warm-up steps ({warmup_steps}) must be >= 0 and fewer than the "
                         f"training steps ({total_steps})")
    return SCHEDULES[schedule](step, total_steps, warmup_steps)
