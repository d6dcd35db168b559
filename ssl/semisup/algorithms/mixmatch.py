"""MixMatch (Berthelot et al., 2019), as semilearn 0.3.2 runs it: the guess is the sharpened mean
of the predictions on two weak views of each unlabeled image; one MixUp mixes the labeled images
(one-hot targets) and both unlabeled views (the guess) with one lambda' = max(lambda, 1 - lambda)
and one permutation; cross-entropy on the mixed labeled rows, lambda_u * ramp * the squared error
of the probabilities on the mixed unlabeled rows.

  q      = sharpen((p(x_w1) + p(x_w2)) / 2, T)                 (BatchNorm statistics frozen)
  x~, y~ = MixUp([x_lb, x_w1, x_w2], [onehot(y), q, q])
  loss   = H(y~_lb, p(x~_lb)) + lambda_u * clip(t / (r T_total)) * mean |p(x~_u) - y~_u|^2

As semilearn (no interleaving), the mixed batch goes through the network in chunks of the labeled
batch size, each its own BatchNorm batch, and only the first chunk updates the running statistics;
each weak view is its own BatchNorm batch too.

Text and audio (mixup_space, semisup.algorithms.mixup): semilearn's mixup_manifold mixes the
pooled features [f(x_lb), f(x_w1), f(x_w2)] instead (the weak ones from the guessing passes; the
labeled ones from a pass of their own with frozen statistics, in that order) and runs the
classifier alone on the mixed rows, in the same chunks. Its mix is no-grad, so on text and audio
semilearn's MixMatch trains the classifier alone (mixed_features_gradient none; backbone lets
the gradient reach the backbone through the labeled features).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, cross_entropy_per_sample,
                   frozen_batchnorm_statistics, scalar)
from .masking import linear_rampup
from .mixup import (check_mixup_space, chunked_logits, mix, mix_features, mixes_features,
                    mixup_draw, one_hot, sharpen_probabilities)


@register
class MixMatch(Algorithm):
    name = "mixmatch"
    display_name = "MixMatch"
    reference = "semilearn 0.3.2"
    hyperparameters = """
      T: {type: number, exclusiveMinimum: 0, description: Sharpening temperature of the guess.}
      mixup_alpha: {type: number, minimum: 0,
                    description: "MixUp's lambda ~ Beta(alpha, alpha); 0: no mixing."}
      lambda_u: {description: Final weight of the unlabeled (squared error) loss., type: number,
                 minimum: 0}
      rampup_fraction: {type: number, minimum: 0, maximum: 1,
                        description: Linear ramp-up of lambda_u over this fraction of the steps.}
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
    views = Views(labeled=("weak",), unlabeled=("weak", "weak"))

    def __init__(self, *, T: float, mixup_alpha: float, lambda_u: float, rampup_fraction: float,
                 mixup_space: str, mixed_features_gradient: str, **base):
        super().__init__(**base)
        self.T, self.mixup_alpha = T, mixup_alpha
        self.lambda_u, self.rampup_fraction = lambda_u, rampup_fraction
        self.mixup_space = check_mixup_space("mixmatch", mixup_space, mixed_features_gradient)
        self.mixed_features_gradient = mixed_features_gradient

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_w1, x_w2) = batch.labeled.views, batch.unlabeled.views
        features = mixes_features("mixmatch", self.mixup_space, x_lb)
        num_labeled = len(batch.labeled.labels)
        with torch.no_grad(), frozen_batchnorm_statistics(ctx.network):
            out_w1, out_w2 = ctx.network(x_w1), ctx.network(x_w2)
            probs_w1 = torch.softmax(out_w1.logits.float(), dim=-1)
            probs_w2 = torch.softmax(out_w2.logits.float(), dim=-1)
            guess = sharpen_probabilities((probs_w1 + probs_w2) / 2, self.T)

        targets = torch.cat([one_hot(batch.labeled.labels, self.num_classes, guess.dtype), guess, guess])
        if features:   # mixup_manifold: the labeled features from a pass of their own
            with frozen_batchnorm_statistics(ctx.network):
                rows = torch.cat([ctx.network(x_lb).features, out_w1.features, out_w2.features])
        else:
            rows = torch.cat([x_lb, x_w1, x_w2])
        lam, permutation = mixup_draw(ctx, len(targets), self.mixup_alpha)
        mixed_x, mixed_y = (mix_features(lam, permutation, rows, targets, self.mixed_features_gradient)
                            if features else mix(lam, permutation, rows, targets))
        logits = chunked_logits(ctx.network, mixed_x, num_labeled, from_features=features)

        loss_sup = cross_entropy_per_sample(logits[0], mixed_y[:num_labeled]).mean()
        probs_mixed = torch.softmax(torch.cat(logits[1:]).float(), dim=-1)
        loss_unsup = F.mse_loss(probs_mixed, mixed_y[num_labeled:], reduction="none").mean(dim=1).mean()
        weight = self.lambda_u * linear_rampup(ctx.step, self.total_steps, self.rampup_fraction)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "unsup_weight": scalar(weight, loss_sup), "mixup_lambda": scalar(lam, loss_sup)}
        return StepOutput(loss_sup + weight * loss_unsup, stats)
