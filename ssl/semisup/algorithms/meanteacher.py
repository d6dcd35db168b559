"""Mean Teacher (Tarvainen & Valpola, 2017): the EMA teacher's probabilities on one weak view are
the target of the student's probabilities on another weak view (mean squared error over
classes), weighted by USB's linear ramp-up; the student's own logits carry the gradient.

`batchnorm` says which samples share a BatchNorm batch (in training mode, what each sample is
normalised with): `joint`, the original Mean Teacher's, the labeled images with the student's
weak views (and the teacher's pass likewise, its running statistics untouched); `separate`,
semilearn 0.3.2's: the labeled images alone, then the teacher's views and the student's views
each alone, both with the running statistics left untouched."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, forward_views,
                   frozen_batchnorm_statistics, scalar, supervised_loss)
from .masking import linear_rampup

BATCHNORM_CHOICES = ("joint", "separate")


@register
class MeanTeacher(Algorithm):
    name = "meanteacher"
    display_name = "Mean Teacher"
    reference = "semilearn 0.3.2 (batchnorm separate); the original's BatchNorm batches (joint)"
    hyperparameters = """
      lambda_u: {description: Final weight of the consistency (MSE) loss., type: number, minimum: 0}
      rampup_fraction: {type: number, minimum: 0, maximum: 1,
                        description: Ramp-up of the weight over this fraction of the steps.}
      batchnorm:
        description: >-
          Which samples share a BatchNorm batch. `joint` (the original Mean Teacher): the labeled
          images with the student's weak views, and for the teacher with its weak views;
          `separate` (semilearn 0.3.2): the labeled images, the teacher's views and the
          student's views each alone, the unlabeled ones leaving the running statistics untouched.
        enum: [joint, separate]
    """
    views = Views(labeled=("weak",), unlabeled=("weak", "weak"))   # the teacher's, the student's
    needs_teacher = True

    def __init__(self, *, lambda_u: float, rampup_fraction: float, batchnorm: str, **base):
        super().__init__(**base)
        if batchnorm not in BATCHNORM_CHOICES:
            raise ValueError(f"meanteacher: batchnorm {batchnorm!r} is not one of {BATCHNORM_CHOICES}")
        self.lambda_u, self.rampup_fraction, self.batchnorm = lambda_u, rampup_fraction, batchnorm

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        if ctx.teacher is None:
            raise ValueError("meanteacher needs the EMA network as ctx.teacher (needs_teacher = True)")
        logits_lb, logits_student, logits_teacher = self.forward(ctx, batch)
        probs_teacher = torch.softmax(logits_teacher.float(), dim=-1)
        loss_sup = supervised_loss(logits_lb, batch.labeled.labels)

        probs_student = torch.softmax(logits_student.float(), dim=-1)
        loss_unsup = F.mse_loss(probs_student, probs_teacher, reduction="none").mean(dim=-1).mean()
        weight = self.lambda_u * linear_rampup(ctx.step, self.total_steps, self.rampup_fraction)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "unsup_weight": scalar(weight, loss_sup)}
        return StepOutput(loss_sup + weight * loss_unsup, stats)

    def forward(self, ctx: StepContext, batch: StepBatch):
        """The labeled logits, the student's and the teacher's unlabeled logits, with the
        BatchNorm batches `batchnorm` says (the teacher's running statistics stay untouched;
        the trainer copies the student's into the EMA network)."""
        (x_lb,), (x_teacher, x_student) = batch.labeled.views, batch.unlabeled.views
        if self.batchnorm == "joint":
            logits_lb, logits_student = forward_views(ctx.network, x_lb, x_student)
            with torch.no_grad(), frozen_batchnorm_statistics(ctx.teacher):
                _, logits_teacher = forward_views(ctx.teacher, x_lb, x_teacher)
            return logits_lb, logits_student, logits_teacher
        logits_lb = ctx.network(x_lb).logits
        with torch.no_grad(), frozen_batchnorm_statistics(ctx.teacher):
            logits_teacher = ctx.teacher(x_teacher).logits
        with frozen_batchnorm_statistics(ctx.network):
            logits_student = ctx.network(x_student).logits
        return logits_lb, logits_student, logits_teacher
