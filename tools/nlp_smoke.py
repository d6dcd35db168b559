"""Make what the NLP smoke study (configs/usb-nlp-smoke.yaml) reads, offline, in seconds, in
data/usb-nlp-smoke/:

  tiny-bert/   a tiny BERT (hidden 16, 2 layers, 2 heads, random weights) and its word-piece
               tokenizer over a 40-word vocabulary, as save_pretrained writes them: loaded
               through the same path as bert-base-uncased
  ag_news/     train.json, dev.json, test.json in USB's release format: 4 classes of short
               made-up news lines, each with two "back-translations" (word-order and synonym
               variants)

    uv run python tools/nlp_smoke.py [folder]      # default: data/usb-nlp-smoke
    uv run snakemake --cores all --configfile configs/usb-nlp-smoke.yaml

The tests make the same files (tests/test_text.py, tests/test_workflow_text.py).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# class -> (subjects, verbs): each a line "<subject> <verb> <object>"
TOPICS = {
    0: (["minister", "president", "embassy"], ["signs", "rejects", "visits"]),
    1: (["team", "striker", "coach"], ["wins", "scores", "loses"]),
    2: (["market", "bank", "company"], ["rises", "falls", "buys"]),
    3: (["scientist", "software", "robot"], ["finds", "launches", "tests"]),
}
OBJECTS = ["deal", "match", "report", "today", "again", "the", "a", "new", "big", "small"]
SYNONYMS = {"wins": "beats", "rises": "grows", "finds": "discovers", "signs": "approves"}


def vocabulary() -> list[str]:
    words = {word for subjects, verbs in TOPICS.values() for word in subjects + verbs}
    words |= set(OBJECTS) | set(SYNONYMS.values())
    return SPECIAL + sorted(words)


def make_tiny_bert(folder: Path, hidden: int = 16, layers: int = 2, seed: int = 0) -> Path:
    """A BertModel with random weights and a BertTokenizerFast over vocabulary(), saved."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {word: index for index, word in enumerate(vocabulary())}
    BertTokenizerFast(vocab, do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocabulary()), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


def line(label: int, rng: random.Random) -> str:
    subjects, verbs = TOPICS[label]
    return " ".join([rng.choice(OBJECTS[5:]), rng.choice(subjects), rng.choice(verbs),
                     *rng.sample(OBJECTS[:5], rng.randint(1, 4))])


def back_translations(text: str) -> tuple[str, str]:
    words = text.split()
    return " ".join(words[1:] + words[:1]), " ".join(SYNONYMS.get(w, w) for w in words)


def make_release(folder: Path, per_class: tuple[int, int, int] = (24, 6, 10), seed: int = 0) -> Path:
    """train/dev/test.json with per_class samples of each class, in USB's format."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in zip(("train", "dev", "test"), per_class, strict=True):
        labels = [label for label in TOPICS for _ in range(count)]
        rng.shuffle(labels)
        samples = {}
        for index, label in enumerate(labels):
            text = line(label, rng)
            samples[str(index)] = {"ori": text, "label": str(label)}
            if name == "train":
                samples[str(index)]["aug_0"], samples[str(index)]["aug_1"] = back_translations(text)
        (folder / f"{name}.json").write_text(json.dumps(samples, indent=1))
    return folder


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "data/usb-nlp-smoke")
    print(f"wrote {make_tiny_bert(root / 'tiny-bert')} and {make_release(root / 'ag_news')}")


if __name__ == "__main__":
    main(sys.argv[1:])
