"""Mean Teacher (Tarvainen & Valpola, 2017): the EMA teacher's probabilities on one weak view are
the target of the student's probabilities on another weak view (mean squared error over
classes), weighted by USB's linear ramp-up. Unlike USB's current code (which feeds the teacher's
logits to both sides), the student's own logits carry the gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, forward_views,
                   frozen_batchnorm_statistics, scalar, supervised_loss)
from .masking import linear_rampup


@register
class MeanTeacher(Algorithm):
    name = "meanteacher"
    display_name = "Mean Teacher"
    reference = "semilearn 0.3.2, with the student's own logits (see the module docstring)"
    hyperparameters = """
      lambda_u: {description: Final weight of the consistency (MSE) loss., type: number, minimum: 0}
      rampup_fraction: {type: number, minimum: 0, maximum: 1,
                        description: Ramp-up of the weight over this fraction of the steps.}
    """
    views = Views(labeled=("weak",), unlabeled=("weak", "weak"))   # the teacher's, the student's
    needs_teacher = True

    def __init__(self, *, lambda_u: float, rampup_fraction: float, **base):
        super().__init__(**base)
        self.lambda_u, self.rampup_fraction = lambda_u, rampup_fraction

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        if ctx.teacher is None:
            raise ValueError("meanteacher needs the EMA network as ctx.teacher (needs_teacher = True)")
        (x_lb,), (x_teacher, x_student) = batch.labeled.views, batch.unlabeled.views
        # As in the original Mean Teacher, student and teacher see the same composition of
        # BatchNorm batch: the labeled images with one weak view each (the teacher's running
        # statistics stay untouched; the trainer copies the student's into the EMA network).
        logits_lb, logits_student = forward_views(ctx.network, x_lb, x_student)
        with torch.no_grad(), frozen_batchnorm_statistics(ctx.teacher):
            _, logits_teacher = forward_views(ctx.teacher, x_lb, x_teacher)
        probs_teacher = torch.softmax(logits_teacher.float(), dim=-1)
        loss_sup = supervised_loss(logits_lb, batch.labeled.labels)

        probs_student = torch.softmax(logits_student.float(), dim=-1)
        loss_unsup = F.mse_loss(probs_student, probs_teacher, reduction="none").mean(dim=-1).mean()
        weight = self.lambda_u * linear_rampup(ctx.step, self.total_steps, self.rampup_fraction)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "unsup_weight": scalar(weight, loss_sup)}
        return StepOutput(loss_sup + weight * loss_unsup, stats)
