"""ReMixMatch (Berthelot et al., 2020), as semilearn 0.3.2 runs it: the weak prediction is aligned
to the labeled class distribution (distribution alignment, an EMA of the unlabeled predictions)
and sharpened into the guess; one MixUp mixes the labeled images and three unlabeled views (two
strong, one weak); cross-entropy on the mixed rows, a pre-mixup cross-entropy of the first strong
view against the guess, and a rotation-prediction loss on the first strong view turned by a random
multiple of 90 degrees.

  q      = sharpen(p(x_w) * p_lb / p_model, T)                  (renormalised; float64)
  x~, y~ = MixUp([x_lb, x_s0, x_s1, x_w], [onehot(y), q, q, q])
  loss   = H(y~_lb, p(x~_lb)) + ramp * (lambda_pre_mixup H(q, p(x_s0)) + lambda_u H(y~_u, p(x~_u)))
           + lambda_rot H(k, p_rot(rot_k(x_s0)))                 (ramp = clip(t / (r T_total)))

semilearn's own behaviour, followed here: p_lb (from the labeled class counts) is float64, so the
aligned probabilities, the guess and the three losses against it are float64; the term semilearn
calls "KL" is this cross-entropy (the same gradient, not the same value); the ramp covers it too
but not the rotation loss; the alignment's momentum is its hook's default, 0.999 (a parameter
here). The weak and strong views are each their own BatchNorm batch with frozen running
statistics; the mixed batch goes through in chunks of the labeled batch size, only the first
updating them (no interleaving). The forwards semilearn makes only for logging (the labeled
images, the second strong view) are left out.

Text and audio (mixup_space, semisup.algorithms.mixup): semilearn's mixup_manifold mixes the
pooled features [f(x_lb), f(x_s0), f(x_s1), f(x_w)] instead (f(x_w) from the guessing pass; the
others from one pass each with frozen statistics, which then are needed: the first strong view's
logits of the pre-mixup term come from its pass) and runs the classifier alone on the mixed rows,
in the same chunks; then the rotation loss, in semilearn's order. Its mix is no-grad, so the
backbone learns from the pre-mixup term alone (mixed_features_gradient none; backbone: through
the labeled and strong features too). USB's text and
audio configs set rot_loss_ratio 0 (lambda_rot here): a rotation of token ids or waveforms is
refused with that advice. The two strong views are the two back-translations of a text
(semisup.data.text) or two strong audio augmentations, as semilearn's datasets make them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, cross_entropy_per_sample,
                   frozen_batchnorm_statistics, scalar)
from .components import DistributionAlignment
from .masking import linear_rampup
from .mixup import (check_mixup_space, chunked_logits, mix, mix_features, mixes_features,
                    mixup_draw, one_hot, sharpen_probabilities)
from .rotation import NUM_ROTATIONS, rotate_randomly


class LabeledPriorAlignment(DistributionAlignment):
    """Distribution alignment to the labeled class distribution, kept in float64 as semilearn's
    (a numpy array), so the aligned probabilities are float64."""

    def __init__(self, labeled_class_counts: tuple[int, ...], momentum: float):
        super().__init__(len(labeled_class_counts), momentum)
        counts = torch.tensor(labeled_class_counts, dtype=torch.float64)
        self.p_target = counts / counts.sum()


@register
class ReMixMatch(Algorithm):
    name = "remixmatch"
    display_name = "ReMixMatch"
    reference = "semilearn 0.3.2"
    hyperparameters = """
      T: {type: number, exclusiveMinimum: 0, description: Sharpening temperature of the guess.}
      mixup_alpha: {type: number, minimum: 0,
                    description: "MixUp's lambda ~ Beta(alpha, alpha); 0: no mixing."}
      lambda_u: {type: number, minimum: 0, description: "Final weight of the mixed unlabeled
                 cross-entropy (semilearn's ulb_loss_ratio)."}
      lambda_pre_mixup:
        type: number
        minimum: 0
        description: >-
          Final weight of the cross-entropy of the first strong view against the guess
          (semilearn's kl_loss_ratio: its "KL" term is this cross-entropy, ramped like lambda_u).
      lambda_rot:
        type: number
        minimum: 0
        description: >-
          Weight of the rotation loss, not ramped (semilearn's rot_loss_ratio); 0 leaves the
          rotation head out.
      rampup_fraction: {type: number, minimum: 0, maximum: 1,
                        description: Linear ramp-up of the unlabeled weights over this fraction of the steps.}
      alignment_momentum:
        type: number
        minimum: 0
        exclusiveMaximum: 1
        description: >-
          EMA momentum of the mean unlabeled prediction p_model (0.999: the default of
          semilearn's DistAlignEMAHook, which its ReMixMatch keeps; no config key sets it).
      mixup_space:
        enum: [by_modality, inputs, features]
        description: >-
          What MixUp mixes: inputs (images), features (the pooled features, then the classifier
          alone: semilearn's mixup_manifold), or by_modality, semilearn's per modality (inputs
          for images, features for text and audio).
      mixed_features_gradient:
        enum: [none, backbone]
        description: >-
          With mixup_space features: none, the mixed features carry no gradient (semilearn
          0.3.2's mixup_one_target runs under no_grad, so the mixed losses train the classifier
          alone); backbone, the gradient reaches the backbone through the features (manifold
          MixUp as published).
    """
    views = Views(labeled=("weak",), unlabeled=("weak", "strong", "strong"))

    def __init__(self, *, T: float, mixup_alpha: float, lambda_u: float, lambda_pre_mixup: float,
                 lambda_rot: float, rampup_fraction: float, alignment_momentum: float,
                 mixup_space: str, mixed_features_gradient: str, **base):
        super().__init__(**base)
        self.T, self.mixup_alpha, self.rampup_fraction = T, mixup_alpha, rampup_fraction
        self.lambda_u, self.lambda_pre_mixup, self.lambda_rot = lambda_u, lambda_pre_mixup, lambda_rot
        self.alignment = LabeledPriorAlignment(self.facts.labeled_class_counts, alignment_momentum)
        self.mixup_space = check_mixup_space("remixmatch", mixup_space, mixed_features_gradient)
        self.mixed_features_gradient = mixed_features_gradient

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        return {"rotation": nn.Linear(num_features, NUM_ROTATIONS)} if self.lambda_rot > 0 else {}

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_w, x_s0, x_s1) = batch.labeled.views, batch.unlabeled.views
        features = mixes_features("remixmatch", self.mixup_space, x_lb)
        if self.lambda_rot > 0 and not isinstance(x_s0, Tensor):
            raise TypeError(f"remixmatch rotates image tensors, not {type(x_s0).__name__}: set "
                            f"algorithms.remixmatch.lambda_rot to 0 (USB's rot_loss_ratio for "
                            f"text and audio)")
        num_labeled = len(batch.labeled.labels)
        with torch.no_grad(), frozen_batchnorm_statistics(ctx.network):
            out_w = ctx.network(x_w)
            probs_w = torch.softmax(out_w.logits.float(), dim=-1)
            guess = sharpen_probabilities(self.alignment(probs_w), self.T)
        if features:   # mixup_manifold: a pass of their own for the labeled and strong views
            with frozen_batchnorm_statistics(ctx.network):
                out_lb, out_s0, out_s1 = ctx.network(x_lb), ctx.network(x_s0), ctx.network(x_s1)
            logits_s0 = out_s0.logits
            rows = torch.cat([out_lb.features, out_s0.features, out_s1.features, out_w.features])
        else:
            with frozen_batchnorm_statistics(ctx.network):
                logits_s0 = ctx.network(x_s0).logits
            loss_rot = self.rotation_loss(ctx, x_s0)
            rows = torch.cat([x_lb, x_s0, x_s1, x_w])

        targets = torch.cat([one_hot(batch.labeled.labels, self.num_classes, guess.dtype),
                             guess, guess, guess])
        lam, permutation = mixup_draw(ctx, len(targets), self.mixup_alpha)
        mixed_x, mixed_y = (mix_features(lam, permutation, rows, targets, self.mixed_features_gradient)
                            if features else mix(lam, permutation, rows, targets))
        logits = chunked_logits(ctx.network, mixed_x, num_labeled, from_features=features)
        if features:
            loss_rot = self.rotation_loss(ctx, x_s0)

        loss_sup = cross_entropy_per_sample(logits[0], mixed_y[:num_labeled]).mean()
        loss_unsup = cross_entropy_per_sample(torch.cat(logits[1:]), mixed_y[num_labeled:]).mean()
        loss_pre_mixup = cross_entropy_per_sample(logits_s0, guess).mean()
        ramp = linear_rampup(ctx.step, self.total_steps, self.rampup_fraction)
        loss = (loss_sup + self.lambda_pre_mixup * ramp * loss_pre_mixup
                + self.lambda_u * ramp * loss_unsup)
        if loss_rot is not None:
            loss = loss + self.lambda_rot * loss_rot

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "loss_pre_mixup": loss_pre_mixup.detach(), "unsup_weight": scalar(ramp, loss_sup),
                 "mixup_lambda": scalar(lam, loss_sup)}
        if loss_rot is not None:
            stats["loss_rotation"] = loss_rot.detach()
        return StepOutput(loss, stats)

    def rotation_loss(self, ctx: StepContext, x_s0: Tensor) -> Tensor | None:
        """H(k, p_rot(rot_k(x_s0))), each image turned by its own random k (frozen statistics)."""
        if self.lambda_rot <= 0:
            return None
        rotated, turns = rotate_randomly(x_s0, ctx.generator)
        with frozen_batchnorm_statistics(ctx.network):
            logits_rot = ctx.network(rotated, want=("rotation",)).heads["rotation"]
        return F.cross_entropy(logits_rot, turns)
