"""Pretrained speech transformers of USB's audio tasks, through Hugging Face transformers, as
semilearn 0.3.2's ClassificationHubert (nets/hubert/hubert.py) and ClassificationWave2Vec
(nets/wave2vecv2/wave2vecv2.py):

  hubert_base     HubertModel, USB's `facebook/hubert-base-ls960`
  wav2vec2_base   Wav2Vec2Model, USB's `facebook/wav2vec2-base-960h`

backbone(waveforms) = mean over time of dropout(p = 0.1)(the last hidden state); the classifier
is Linear(H, H), GELU, Linear(H, C) (H = the model's hidden size, 768 for the base models; here
read from its config, so tiny test models work). As semilearn, the feature encoder's
`_requires_grad` is off (it would force the input to require grad; VAT perturbs the input) and
the model's own config applies (its SpecAugment time masking while training included).

Resume: transformers draws SpecAugment's masks (mask_time_prob of the pretrained configs) from
numpy's global generator, which checkpoints do not hold; while training, the backbone seeds it
before each forward pass from torch's global generator, which they do, so a resumed run draws
the same masks (semilearn leaves numpy's generator as it is).

use_mask: semilearn calls the model without an attention mask (the base models' extractors
return none: zeros pad the clips and count in the mean); use_mask = true passes the WaveBatch's
mask and averages over the real frames only.

Layers for layer-wise learning-rate decay (semisup.optim, semilearn's group_matcher): the stem
(feature_extractor, feature_projection, and for HuBERT encoder.pos_conv_embed) is layer 0,
encoder.layers.i is i + 1; the rest (wav2vec2's pos_conv_embed, encoder.layer_norm,
masked_spec_embed) sits with the classifier on top. No parameter is exempt from weight decay
beyond biases and norms (no_weight_decay = []).

`pretrained` is a folder holding a save_pretrained() copy (config.json, model.safetensors) or a
Hugging Face hub name; without internet the error names the folder to fill.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import SemisupError
from .network import Network

HUB_NAMES = {"hubert_base": "facebook/hubert-base-ls960",
             "wav2vec2_base": "facebook/wav2vec2-base-960h"}
STEMS = {"hubert_base": ("feature_extractor", "feature_projection", "encoder.pos_conv_embed"),
         "wav2vec2_base": ("feature_extractor", "feature_projection")}
BLOCK = re.compile(r"^model\.encoder\.layers\.(\d+)\.")


class PretrainedModelMissing(SemisupError):
    """The pretrained weights could not be found or fetched."""


class SpeechBackbone(nn.Module):
    def __init__(self, model: nn.Module, stem: tuple[str, ...], dropout: float, use_mask: bool):
        super().__init__()
        self.model = model
        self.model.feature_extractor._requires_grad = False
        self.dropout = nn.Dropout(p=dropout)
        self.stem, self.use_mask = stem, use_mask
        self.num_features = model.config.hidden_size
        self.num_layers = model.config.num_hidden_layers + 1

    def forward(self, inputs) -> Tensor:
        if self.training and spec_augment_masks(self.model.config):
            np.random.seed(int(torch.randint(2 ** 32, (1,), dtype=torch.int64)))
        mask = inputs.mask.long() if self.use_mask else None
        hidden = self.dropout(self.model(inputs.waveform, attention_mask=mask).last_hidden_state)
        if not self.use_mask:
            return hidden.mean(dim=1)
        frames = self.model._get_feature_vector_attention_mask(hidden.shape[1], mask)
        frames = frames.to(hidden.dtype).unsqueeze(-1)
        return (hidden * frames).sum(dim=1) / frames.sum(dim=1).clamp(min=1)

    def layer_id(self, name: str) -> int:
        if any(name.startswith(f"model.{part}") for part in self.stem):
            return 0
        block = BLOCK.match(name)
        return int(block.group(1)) + 1 if block else self.num_layers

    def no_weight_decay(self) -> list[str]:
        return []


def spec_augment_masks(config) -> bool:
    return getattr(config, "apply_spec_augment", True) and (
        config.mask_time_prob > 0 or config.mask_feature_prob > 0)


def load_pretrained(model_class, name: str, pretrained: str) -> nn.Module:
    """The model from a local folder, else from the hub (cache first); a clear error offline."""
    folder = Path(pretrained).expanduser()
    source = str(folder) if folder.is_dir() else pretrained
    try:
        return model_class.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as error:
        hub = HUB_NAMES[name]
        raise PretrainedModelMissing(
            f"{name}: cannot load the pretrained model {pretrained!r} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Without internet access, on a "
            f"machine with it run `python -c \"from transformers import {model_class.__name__} "
            f"as M; M.from_pretrained('{hub}').save_pretrained('<folder>')\"`, copy <folder> "
            f"here and set models.{name}.pretrained to its path (it must hold config.json and "
            f"the weights)") from error


def speech_network(name: str, model_class, num_classes: int, pretrained: str, dropout: float,
                   use_mask: bool) -> Network:
    model = load_pretrained(model_class, name, pretrained)
    backbone = SpeechBackbone(model, STEMS[name], dropout, use_mask)
    width = backbone.num_features
    classifier = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, num_classes))
    return Network(backbone, classifier)


def hubert_base(num_classes: int, inputs, *, pretrained: str, dropout: float,
                use_mask: bool) -> Network:
    from transformers import HubertModel

    return speech_network("hubert_base", HubertModel, num_classes, pretrained, dropout, use_mask)


def wav2vec2_base(num_classes: int, inputs, *, pretrained: str, dropout: float,
                  use_mask: bool) -> Network:
    from transformers import Wav2Vec2Model

    return speech_network("wav2vec2_base", Wav2Vec2Model, num_classes, pretrained, dropout,
                          use_mask)


MODELS = {"hubert_base": hubert_base, "wav2vec2_base": wav2vec2_base}
