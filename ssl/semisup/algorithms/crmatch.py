"""CRMatch (Fan et al., 2022), as semilearn 0.3.2 runs it: FixMatch's masked cross-entropy, a
feature-distance term that pushes a head's outputs on the weak and strong views of a confident
sample apart (their cosine similarity, where positive), and rotation prediction on every unlabeled
image of a separate weak batch turned by 0, 90, 180 and 270 degrees; the four terms are added with
weight 1 each in semilearn.

  mask = [max p(x_w) >= tau],  yhat = argmax p(x_w)                        (x_w's logits detached)
  loss = H(y, p(x_lb)) + lambda_u mean(mask H(yhat, p(x_s)))
         + lambda_feature mean(mask max(0, cos(d(x_s), d(x_w)))) + lambda_rot H(k, p_rot(rot_k(x_r)))

semilearn's own behaviour, followed here: its ulb_loss_ratio is unread and its rot_loss_ratio only
switches the rotation head on (weights 1: the published values of lambda_u, lambda_feature and
lambda_rot here; lambda_rot 0 leaves the head and the rotated batch out); hard_label is unread
(hard pseudo-labels); the feature-distance gradient flows through both views; every image goes
through the network as one BatchNorm batch. The rotated images are the first B (labeled batch
size) images of a third, weak view of the unlabeled batch: semilearn draws them from a loader of
their own over the unlabeled set, with the labeled (weak) transform.

One difference in the network: semilearn's head d (`ds_classifier`) is a linear map of the
flattened last feature map of a WRN or ResNet (8 x 8 x C at 32 px), the pooled features
only for ViT, BERT and wav2vec; heads here see the pooled features (the network's contract), so d
is the linear map C -> C of the pooled features everywhere: semilearn's transformer form, and for
a CNN its map with one weight per channel shared across positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, cross_entropy_per_sample,
                   forward_outputs, scalar, selection_stats, supervised_loss)
from .masking import confidence_and_pseudo_labels, fixed_threshold_mask
from .rotation import NUM_ROTATIONS, all_rotations


@register
class CRMatch(Algorithm):
    name = "crmatch"
    display_name = "CRMatch"
    reference = "semilearn 0.3.2, its feature head on pooled features (see the module docstring)"
    figures = ("selection",)
    hyperparameters = """
      tau: {description: Confidence threshold., type: number, minimum: 0, maximum: 1}
      lambda_u:
        type: number
        minimum: 0
        description: Weight of the masked cross-entropy (1 in semilearn, which ignores its ulb_loss_ratio).
      lambda_feature: {type: number, minimum: 0,
                       description: Weight of the feature-distance term (1 in semilearn).}
      lambda_rot:
        type: number
        minimum: 0
        description: >-
          Weight of the rotation loss (1 in semilearn, whose rot_loss_ratio only switches it on);
          0 leaves the rotation head and the rotated batch out.
    """
    views = Views(labeled=("weak",), unlabeled=("weak", "strong", "weak"))   # the last: rotated

    def __init__(self, *, tau: float, lambda_u: float, lambda_feature: float, lambda_rot: float,
                 **base):
        super().__init__(**base)
        self.tau, self.lambda_u, self.lambda_feature, self.lambda_rot = (
            tau, lambda_u, lambda_feature, lambda_rot)
        if lambda_rot <= 0:
            self.views = Views(labeled=("weak",), unlabeled=("weak", "strong"))

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        heads = {"feature_distance": nn.Linear(num_features, num_features)}
        if self.lambda_rot > 0:
            heads["rotation"] = nn.Sequential(nn.Linear(num_features, num_features), nn.ReLU(),
                                              nn.Linear(num_features, NUM_ROTATIONS))
        return heads

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_w, x_s, *rotation_view) = batch.labeled.views, batch.unlabeled.views
        num_labeled = len(batch.labeled.labels)
        want = ("feature_distance", "rotation") if rotation_view else ("feature_distance",)
        # One BatchNorm batch, in semilearn's order (another order moves the sums' last bits).
        rotated, turns = all_rotations(rotation_view[0][:num_labeled]) if rotation_view else (None, None)
        views = (x_lb, x_w, x_s, rotated) if rotation_view else (x_lb, x_w, x_s)
        out_lb, out_w, out_s, *out_rotated = forward_outputs(ctx.network, *views, want=want)

        confidence, pseudo_labels = confidence_and_pseudo_labels(
            torch.softmax(out_w.logits.detach().float(), dim=-1))
        mask = fixed_threshold_mask(confidence, self.tau)
        loss_sup = supervised_loss(out_lb.logits, batch.labeled.labels)
        loss_unsup = (cross_entropy_per_sample(out_s.logits, pseudo_labels) * mask).mean()
        dissimilar = torch.full_like(mask, -1.0)
        loss_feature = (F.cosine_embedding_loss(out_s.heads["feature_distance"],
                                                out_w.heads["feature_distance"], dissimilar,
                                                reduction="none") * mask).mean()
        loss = loss_sup + self.lambda_u * loss_unsup + self.lambda_feature * loss_feature
        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "loss_feature": loss_feature.detach(), "threshold": scalar(self.tau, loss_sup)}
        if rotation_view:
            loss_rot = F.cross_entropy(out_rotated[0].heads["rotation"], turns)
            loss = loss + self.lambda_rot * loss_rot
            stats["loss_rotation"] = loss_rot.detach()
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled.labels))
        return StepOutput(loss, stats)
