"""BERT for text classification as semilearn 0.3.2's ClassificationBert (nets/bert/bert.py), USB's
network for its NLP tasks, as a Network (backbone + classifier + heads):

  backbone    transformers' BertModel (pretrained weights), then dropout (p = 0.1) on the last
              hidden state and its mean over the sequence: the features (hidden_size wide)
  classifier  Linear(hidden, hidden), GELU, Linear(hidden, num_classes) (torch's initialisation)

The pooling is semilearn's `torch.mean(dropout(last_hidden_state), 1)`: a mean over every
position of the padded batch, padding included. semilearn forwards each view alone, padded to
its own longest text, where a step here joins its views into one batch padded to the longest of
them all (semisup.data.inputs). So `pooling`:
  view_positions  semilearn's mean over each sample's own view's positions (its tokens and its
                  view's padding: mask 1 and 2, semisup.data.text), whatever the join added; the
                  same hidden states as semilearn's (padding is never attended to), summed in
                  another order (about 1e-7 apart)
  all_positions   `torch.mean(., 1)` over the joined batch, semilearn's code as written (its
                  bits on a batch of one view: benchmarks/reference_text.py); a short text's
                  features then depend on the longest text of the other views
  attended        the mean over the real tokens only, the same whatever the padding
The network attends to the real tokens only (mask 1).

VAT on text (semilearn's vat_embed): `network(tokens, want=("input_embeddings",))` also returns
hidden_states[0], the embedding layer's output (word + position + token type embeddings,
LayerNorm, dropout) of that very pass, semilearn's `return_embed`; an EmbeddedTokens batch goes in
as `inputs_embeds`, as semilearn feeds its perturbed embeddings back. transformers then adds the
position and token type embeddings and applies LayerNorm and dropout a second time: semilearn's
perturbed pass is not its clean pass at r = 0 (semisup.algorithms.vat says what follows).

Layers for layer-wise learning-rate decay (semisup.optim, semilearn's `group_matcher`):
bert.embeddings is layer 0, bert.encoder.layer.i is layer i + 1, the pooler (unused, as in
semilearn) joins the classifier on top (num_layers = blocks + 1). No parameter is exempt from
weight decay by name (semilearn's `no_weight_decay()` is []).

The weights and the tokenizer come from `name_or_path`: a Hugging Face hub name (downloaded once
into its cache) or a local folder holding what `save_pretrained` writes.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.inputs import EmbeddedTokens, TokenBatch
from ..errors import PretrainedError
from .network import Network

POOLINGS = ("view_positions", "all_positions", "attended")
BLOCK = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")


def offline_help(name_or_path: str, what: str, error: Exception) -> PretrainedError:
    folder = Path("data/pretrained") / Path(name_or_path).name
    return PretrainedError(
        f"cannot load the {what} of {name_or_path!r} ({type(error).__name__}: {error}). "
        f"Without internet access, save it elsewhere (python -c \"from transformers import "
        f"AutoModel, AutoTokenizer; AutoModel.from_pretrained('{name_or_path}')"
        f".save_pretrained('{folder}'); AutoTokenizer.from_pretrained('{name_or_path}')"
        f".save_pretrained('{folder}')\"), copy the folder to {folder.resolve()}/ here (it holds "
        f"config.json, model.safetensors, vocab.txt, tokenizer.json, tokenizer_config.json) and "
        f"set the model's name_or_path to that folder (models.<model>.name_or_path in your "
        f"study's config)")


def load_tokenizer(name_or_path: str):
    """The network's tokenizer (a fast one where transformers has it)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise offline_help(name_or_path, "tokenizer", error) from error


def load_bert(name_or_path: str):
    from transformers import BertModel

    try:
        return BertModel.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise offline_help(name_or_path, "pretrained weights", error) from error


class BertBackbone(nn.Module):
    returns_input_embeddings = True

    def __init__(self, bert: nn.Module, dropout: float, pooling: str):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        self.bert, self.pooling = bert, pooling
        self.dropout = nn.Dropout(p=dropout)
        self.num_features = bert.config.hidden_size
        self.num_layers = bert.config.num_hidden_layers + 1

    def forward(self, inputs: TokenBatch | EmbeddedTokens, return_input_embeddings: bool = False):
        real = (inputs.mask == 1).long()
        tokens = ({"inputs_embeds": inputs.embeddings} if isinstance(inputs, EmbeddedTokens)
                  else {"input_ids": inputs.ids})
        output = self.bert(**tokens, attention_mask=real, return_dict=True,
                           output_hidden_states=return_input_embeddings)
        features = self.pool(self.dropout(output.last_hidden_state), inputs.mask, real)
        return (features, output.hidden_states[0]) if return_input_embeddings else features

    def pool(self, hidden: Tensor, mask: Tensor, real: Tensor) -> Tensor:
        if self.pooling == "all_positions":
            return torch.mean(hidden, 1)
        pooled = (mask > 0) if self.pooling == "view_positions" else real
        weights = pooled.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1)

    def layer_id(self, name: str) -> int:
        if name.startswith("bert.embeddings."):
            return 0
        block = BLOCK.match(name)
        return int(block.group(1)) + 1 if block else self.num_layers

    def no_weight_decay(self) -> list[str]:
        return []


def classification_bert(num_classes: int, inputs=None, *, name_or_path: str, max_length: int,
                        dropout: float, pooling: str) -> Network:
    """semilearn's ClassificationBert loaded from `name_or_path`; `max_length` (the data layer's
    truncation) must fit the model's position embeddings."""
    bert = load_bert(name_or_path)
    positions = bert.config.max_position_embeddings
    if max_length > positions:
        raise PretrainedError(f"max_length {max_length} exceeds the {positions} positions of "
                              f"{name_or_path!r}; set the model's max_length to at most {positions}")
    backbone = BertBackbone(bert, dropout, pooling)
    width = backbone.num_features
    classifier = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, num_classes))
    return Network(backbone, classifier)


MODELS = {"bert_base_uncased": classification_bert}
