"""VAT (Miyato et al., 2018), as semilearn 0.3.2 runs it: the labeled loss, plus lambda_u times a
linear ramp-up clip(t / (0.4 T_total)) times the local distributional smoothness
KL(p(x) || p(x + eps * d_adv)), plus lambda_entropy (0.06) times the entropy of p(x), on one
weak view of the unlabeled images. d_adv comes from one power iteration: the gradient of
KL(p(x) || p(x + xi d)) at d random (unit L2 norm per sample), normalised. mu = 1 is set through
the training config (`uratio`), not here.

As in semilearn: the labeled batch and the unlabeled passes are separate forward passes, and
only the labeled pass updates the BatchNorm running statistics (the clean unlabeled pass and
both perturbed passes leave them untouched); the target p(x) is detached in both KL terms; the
entropy term carries the gradient of the clean unlabeled pass.

`power_iteration_precision` (ALGORITHMS.md): with semilearn's xi = 1e-6, x + xi d rounds back to
x in float32 for most pixels (one part in 1e8 is below float32's resolution near 1), and under
bf16 autocast for all of them, so the direction semilearn finds is mostly rounding noise (on an
untrained WRN-28-2, moving the images by one part in 1e7 turns it to a cosine of 0.1-0.7 with
itself). `float32` reproduces it; `float64` runs the power iteration (the clean and the probed
pass and the gradient) in double precision with autocast off, where xi d is resolved: the
paper's method (there the same move leaves the direction unchanged, and it agrees with float32's
at a resolvable xi = 0.1 to a cosine of 0.99). A larger xi in float32 is another way.

Waveforms (the audio modality's WaveBatch): the padded, normalised waveform is perturbed (its
L2 norm per sample over the whole padded width) and the mask kept, as semilearn perturbs its
audio networks' input values (USB's audio configs leave vat_embed false).

Text (TokenBatch), as semilearn's vat_embed (set true in every config/usb_nlp/vat config; token
ids cannot be perturbed): the clean unlabeled pass also returns BERT's embedding-layer output e
(hidden_states[0]: word + position + token type embeddings, LayerNorm, dropout; semisup.models
.bert), and the perturbed passes feed e + r back as inputs_embeds with the batch's mask
(EmbeddedTokens). The noise and the direction have e's shape, L2-normalised per sample over all
of the view's positions and the hidden size (semilearn's `_l2_normalize` of a 3-d tensor); the
power iteration probes e detached, the adversarial pass takes e + eps * d_adv with e's gradient
(so the LDS term trains the embeddings through the clean pass too), as semilearn. What follows
from semilearn's way in, reproduced: transformers adds positions and token types to inputs_embeds
and normalises them again, so the perturbed network is not the clean one at r = 0 and the KL
of the power iteration does not start at 0 (float64 takes its target p from e fed back, where it
does). The paper's perturbation of the word embeddings alone is not implemented.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, frozen_batchnorm_statistics,
                   scalar, supervised_loss)
from .masking import linear_rampup
from ..data.inputs import EmbeddedTokens, TokenBatch, WaveBatch
from ..models.network import INPUT_EMBEDDINGS

PRECISIONS = ("float32", "float64")


def kl_with_logits(target_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(softmax(target) || softmax(logits)), the mean over the batch, written as semilearn's
    sum_c q log q - sum_c q log p: in the power iteration the divergence is of the order of
    float32's rounding, so the direction depends on how it is computed."""
    q = torch.softmax(target_logits, dim=1)
    log_q, log_p = torch.log_softmax(target_logits, dim=1), torch.log_softmax(logits, dim=1)
    return (q * log_q).sum(dim=1).mean(dim=0) - (q * log_p).sum(dim=1).mean(dim=0)


def entropy_with_logits(logits: Tensor) -> Tensor:
    """Mean over the batch of H(softmax(logits))."""
    return -(torch.softmax(logits, dim=1) * torch.log_softmax(logits, dim=1)).sum(dim=1).mean(dim=0)


def l2_normalize(d: Tensor) -> Tensor:
    """Each sample scaled to unit L2 norm (semilearn's 1e-16 guard against a zero direction)."""
    norms = d.flatten(1).pow(2).sum(dim=1).sqrt()
    return d / (norms.view(-1, *[1] * (d.dim() - 1)) + 1e-16)


def in_double_precision(network: nn.Module):
    """The network as a function of its inputs, run with float64 copies of its parameters and
    buffers (the network itself is not changed; autocast is off inside)."""
    module = getattr(network, "_orig_mod", network)   # a torch.compile'd network: the original
    tensors = {name: value.detach().double() if value.is_floating_point() else value
               for name, value in {**dict(module.named_parameters()),
                                   **dict(module.named_buffers())}.items()}
    device_type = next(iter(tensors.values())).device.type

    def forward(inputs):
        with torch.autocast(device_type, enabled=False):
            return functional_call(module, tensors, (inputs,))
    return forward


def perturbed_values(inputs) -> tuple[Tensor, Callable]:
    """The tensor VAT perturbs and how to make the network's input from it: an image batch
    itself; a WaveBatch's waveforms, its mask kept."""
    if isinstance(inputs, Tensor):
        return inputs, lambda values: values
    if isinstance(inputs, WaveBatch):
        return inputs.waveform, lambda values: replace(inputs, waveform=values)
    raise TypeError(f"vat perturbs image tensors, waveforms and (TokenBatch) BERT's input "
                    f"embeddings, not {type(inputs).__name__}")


def embedded_as(tokens: TokenBatch) -> Callable:
    """How perturbed embeddings of `tokens` go back into the network: inputs_embeds, same mask."""
    return lambda embeddings: EmbeddedTokens(embeddings, tokens.mask)


@register
class VAT(Algorithm):
    name = "vat"
    display_name = "VAT"
    reference = "semilearn 0.3.2 (power_iteration_precision float32)"
    hyperparameters = """
      eps: {type: number, exclusiveMinimum: 0,
            description: L2 norm of the adversarial perturbation per sample (semilearn's vat_eps).}
      xi: {type: number, exclusiveMinimum: 0,
           description: "L2 norm of the power iteration's probe per sample (semilearn: 1e-6)."}
      power_iteration_precision:
        description: >-
          float32: the power iteration in the network's precision (semilearn 0.3.2; with xi 1e-6
          its direction is mostly rounding noise, in float32 and even more under bf16); float64:
          in double precision with autocast off, where xi d is resolved (the paper's method).
        enum: [float32, float64]
      lambda_u: {description: Final weight of the smoothness (KL) loss., type: number, minimum: 0}
      lambda_entropy:
        description: "Weight of the entropy of the unlabeled predictions (semilearn's ent_loss_ratio)."
        type: number
        minimum: 0
      rampup_fraction: {type: number, minimum: 0, maximum: 1,
                        description: Linear ramp-up of lambda_u over this fraction of the steps.}
    """
    views = Views(labeled=("weak",), unlabeled=("weak",))

    def __init__(self, *, eps: float, xi: float, power_iteration_precision: str, lambda_u: float,
                 lambda_entropy: float, rampup_fraction: float, **base):
        super().__init__(**base)
        if power_iteration_precision not in PRECISIONS:
            raise ValueError(f"vat: power_iteration_precision {power_iteration_precision!r} is "
                             f"not one of {PRECISIONS}")
        self.eps, self.xi, self.precision = eps, xi, power_iteration_precision
        self.lambda_u, self.lambda_entropy = lambda_u, lambda_entropy
        self.rampup_fraction = rampup_fraction

    def adversarial_direction(self, network: nn.Module, x: Tensor, logits: Tensor,
                              generator: torch.Generator,
                              as_input: Callable = lambda values: values) -> Tensor:
        """One power iteration: the unit direction (per sample) in which p(x + r) moves fastest
        away from p(x), from the gradient at a random probe r = xi d (as_input(x + r): what the
        network takes)."""
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        forward = network
        if self.precision == "float64":   # the target p(x) too, so that the gradient at r = 0 is 0
            forward, x = in_double_precision(network), x.double()
            with torch.no_grad():
                logits = forward(as_input(x)).logits
        probe = (self.xi * l2_normalize(noise.to(x.dtype))).requires_grad_()
        divergence = kl_with_logits(logits.detach(), forward(as_input(x + probe)).logits)
        (gradient,) = torch.autograd.grad(divergence, probe)
        return l2_normalize(gradient).to(noise.dtype)

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_ulb,) = batch.labeled.views, batch.unlabeled.views
        text = isinstance(x_ulb, TokenBatch)
        if not text:
            values, as_input = perturbed_values(x_ulb)
        loss_sup = supervised_loss(ctx.network(x_lb).logits, batch.labeled.labels)
        with frozen_batchnorm_statistics(ctx.network):
            if text:   # semilearn's vat_embed: the embeddings of this very pass
                output = ctx.network(x_ulb, want=(INPUT_EMBEDDINGS,))
                logits_ulb, values = output.logits, output.heads[INPUT_EMBEDDINGS]
                as_input = embedded_as(x_ulb)
            else:
                logits_ulb = ctx.network(x_ulb).logits
            direction = self.adversarial_direction(ctx.network, values.detach(), logits_ulb,
                                                   ctx.generator, as_input)
            logits_adversarial = ctx.network(as_input(values + self.eps * direction)).logits
        loss_unsup = kl_with_logits(logits_ulb.detach(), logits_adversarial)
        loss_entropy = entropy_with_logits(logits_ulb)
        weight = self.lambda_u * linear_rampup(ctx.step, self.total_steps, self.rampup_fraction)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "loss_entropy": loss_entropy.detach(), "unsup_weight": scalar(weight, loss_sup)}
        return StepOutput(loss_sup + weight * loss_unsup + self.lambda_entropy * loss_entropy, stats)
