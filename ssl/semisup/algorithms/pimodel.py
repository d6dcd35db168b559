"""Pi-model (Laine & Aila, 2017), as semilearn 0.3.2 runs it: two weak views of each unlabeled
image, the student's probabilities on the second pulled towards its (detached) probabilities on
the first by a mean squared error over classes, weighted by a linear ramp-up
clip(t / (0.4 T_total)). mu = 1 is set through the training config (`uratio`), not here.

As in semilearn, the labeled batch and each unlabeled view are three separate forward passes
(three BatchNorm batches), and only the labeled pass updates the BatchNorm running statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, frozen_batchnorm_statistics,
                   scalar, supervised_loss)
from .masking import linear_rampup


@register
class PiModel(Algorithm):
    name = "pimodel"
    display_name = "Pi-model"
    reference = "semilearn 0.3.2"
    hyperparameters = """
      lambda_u: {description: Final weight of the consistency (MSE) loss., type: number, minimum: 0}
      rampup_fraction: {type: number, minimum: 0, maximum: 1,
                        description: Linear ramp-up of the weight over this fraction of the steps.}
    """
    views = Views(labeled=("weak",), unlabeled=("weak", "weak"))   # the target's, the student's

    def __init__(self, *, lambda_u: float, rampup_fraction: float, **base):
        super().__init__(**base)
        self.lambda_u, self.rampup_fraction = lambda_u, rampup_fraction

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_target, x_student) = batch.labeled.views, batch.unlabeled.views
        logits_lb = ctx.network(x_lb).logits
        with frozen_batchnorm_statistics(ctx.network):
            logits_target = ctx.network(x_target).logits
            logits_student = ctx.network(x_student).logits
        loss_sup = supervised_loss(logits_lb, batch.labeled.labels)

        probs_target = torch.softmax(logits_target.detach(), dim=-1)
        probs_student = torch.softmax(logits_student, dim=-1)
        loss_unsup = F.mse_loss(probs_student, probs_target, reduction="none").mean(dim=-1).mean()
        weight = self.lambda_u * linear_rampup(ctx.step, self.total_steps, self.rampup_fraction)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "unsup_weight": scalar(weight, loss_sup)}
        return StepOutput(loss_sup + weight * loss_unsup, stats)
