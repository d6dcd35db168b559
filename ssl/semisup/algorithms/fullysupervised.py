"""Fully supervised (the upper bound): the labeled loss only, on every training sample with its
label, with the same network, schedule and EMA as the others (semilearn 0.3.2's
`fullysupervised`). It ignores the label split, so its runs repeat the same training for every
label budget of a study (only the seed changes what it learns): one budget's rows suffice.

Training on all the labels is the trainer's work (`labeled_set = "all"`): an epoch visits every
training sample once; no unlabeled batch is drawn.
"""
from __future__ import annotations

from . import register
from .supervised import Supervised


@register
class FullySupervised(Supervised):
    name = "fullysupervised"
    display_name = "Fully supervised"
    reference = "semilearn 0.3.2 (its `fullysupervised`: every training label)"
    hyperparameters = "{}"
    labeled_set = "all"
