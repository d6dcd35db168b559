"""Mean Teacher (Tarvainen & Valpola, 2017): the EMA teacher's probabilities on one weak view are
the target of the student's probabilities on another weak view (mean squared error over
classes), weighted by USB's linear ramp-up. Unlike USB's current code (which feeds the teacher's
logits to both sides), the student's own logits carry the gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import (Algorithm, StepBatch, StepOutput, forward_views, frozen_batchnorm_statistics,
                   scalar, supervised_loss)
from .masking import linear_rampup


@register
class MeanTeacher(Algorithm):
    name = "meanteacher"
    second_view = "weak"
    needs_teacher = True

    def __init__(self, *, lambda_u: float, rampup_fraction: float, **base):
        super().__init__(**base)
        self.lambda_u, self.rampup_fraction = lambda_u, rampup_fraction

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        if teacher is None:
            raise ValueError("meanteacher needs the EMA model as `teacher` (needs_teacher = True)")
        # As in the original Mean Teacher, student and teacher see the same composition of
        # BatchNorm batch: the labeled images with one weak view each (the teacher's running
        # statistics stay untouched; the trainer copies the student's into the EMA model).
        logits_lb, logits_student = forward_views(model, batch.labeled_images, batch.strong_images)
        with torch.no_grad(), frozen_batchnorm_statistics(teacher):
            _, logits_teacher = forward_views(teacher, batch.labeled_images, batch.weak_images)
        probs_teacher = torch.softmax(logits_teacher.float(), dim=-1)
        loss_sup = supervised_loss(logits_lb, batch.labels)

        probs_student = torch.softmax(logits_student.float(), dim=-1)
        loss_unsup = F.mse_loss(probs_student, probs_teacher, reduction="none").mean(dim=-1).mean()
        weight = self.lambda_u * linear_rampup(step, self.total_steps, self.rampup_fraction)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "unsup_weight": scalar(weight, loss_sup)}
        return StepOutput(loss_sup + weight * loss_unsup, stats)
