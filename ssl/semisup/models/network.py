"""A network = backbone + classifier + named heads.

The backbone maps a batch of inputs (images, token batches, waveforms: semisup.data.inputs) to
one feature vector per sample (`num_features` wide); the classifier maps features to logits;
heads are the extra outputs an algorithm trains on the same features (a projection for
CoMatch/SimMatch, a rotation classifier for ReMixMatch/CRMatch). The trainer adds the heads an
algorithm declares (`Algorithm.heads`) before it builds the optimizer and the EMA, so they are
trained, averaged and checkpointed with the rest.

`network(inputs, want=("proj",))` returns a NetOutput: logits, features and the heads asked
for (computed only when asked); evaluation reads the logits.

Two more ways in, for the algorithms semilearn runs with other inputs on text and audio:
  from_features=True   `inputs` are features (what the backbone returns, e.g. MixUp of them):
                       only the classifier and the heads run (semilearn's `only_fc`); MixMatch
                       and ReMixMatch mix pooled features where inputs cannot be mixed
  want=("input_embeddings",)
                       the output's heads also carry what the backbone feeds its encoder (BERT:
                       the embedding layer's output, semilearn's `return_embed`) from the same
                       forward pass; a backbone that takes such embeddings back as inputs
                       (semisup.data.inputs.EmbeddedTokens) lets VAT perturb them (vat_embed)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from torch import Tensor, nn


INPUT_EMBEDDINGS = "input_embeddings"


class NetOutput(NamedTuple):
    logits: Tensor
    features: Tensor
    heads: dict[str, Tensor]


class Network(nn.Module):
    def __init__(self, backbone: nn.Module, classifier: nn.Module,
                 heads: Mapping[str, nn.Module] | None = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.heads = nn.ModuleDict(dict(heads or {}))

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def add_heads(self, heads: Mapping[str, nn.Module]) -> Network:
        """Add the heads an algorithm declares (a name may be added once)."""
        for name, head in heads.items():
            if name in self.heads:
                raise ValueError(f"the network already has a head {name!r}")
            self.heads[name] = head
        return self

    def forward(self, inputs, want: tuple[str, ...] = (), *, from_features: bool = False) -> NetOutput:
        extras = {}
        if from_features:
            features = inputs
        elif INPUT_EMBEDDINGS in want:
            if not getattr(self.backbone, "returns_input_embeddings", False):
                raise TypeError(f"the {type(self.backbone).__name__} backbone cannot return its "
                                f"input embeddings (only BERT does: VAT's vat_embed is for text)")
            features, extras[INPUT_EMBEDDINGS] = self.backbone(inputs, return_input_embeddings=True)
        else:
            features = self.backbone(inputs)
        logits = self.classifier(features)
        heads = {name: self.heads[name](features) for name in want if name != INPUT_EMBEDDINGS}
        return NetOutput(logits, features, {**heads, **extras})
