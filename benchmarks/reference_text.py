"""Check ssl-repro's text path against semilearn 0.3.2's own files, bit for bit: its batches
(datasets/collactors/nlp_collactor.py, DataCollatorWithPadding) and its network
(nets/bert/bert.py, ClassificationBert). Nothing of semilearn is copied into this project: the
script loads its files by path, in this environment (which has transformers).

On a small BERT saved with save_pretrained (hidden 768, as ClassificationBert hard-codes, one
layer) and the tiny AG News-shaped release of tools/nlp_smoke.py, it checks that
- our weak view of a batch is semilearn's collated `x_ulb_w` (ids and mask, padded to the
  batch's longest text) and each strong view row one of the sample's two back-translations as
  semilearn's collator tokenises them;
- with the same weights, our bert_base_uncased gives semilearn's features and logits on that
  batch, in eval mode (no dropout): bit for bit with `pooling: all_positions`, within float
  rounding with `view_positions` (the same mean on a batch of one view, summed in another order);
- the layer ids give semilearn's layer-decay groups (group_matcher: embeddings 0, block i at
  i + 1, the rest on top).

    uv run python benchmarks/reference_text.py \\
        --semilearn ~/.cache/ssl-repro/semilearn-0.3.2/lib/python3.11/site-packages/semilearn
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from nlp_smoke import make_release, vocabulary

from semisup.data import get_dataset
from semisup.data.text import text_train_data
from semisup.models import build_network
from semisup.models.bert import load_tokenizer

DEFAULT = Path.home() / ".cache/ssl-repro/semilearn-0.3.2/lib/python3.11/site-packages/semilearn"


def load_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_collator_module(semilearn: Path):
    """nlp_collactor.py imports transformers.file_utils (gone in transformers 5): stand in."""
    import transformers
    from transformers.utils import PaddingStrategy

    sys.modules.setdefault("transformers.file_utils",
                           types.SimpleNamespace(PaddingStrategy=PaddingStrategy))
    transformers.file_utils = sys.modules["transformers.file_utils"]
    return load_file("semilearn_nlp_collactor", semilearn / "datasets/collactors/nlp_collactor.py")


def make_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast({word: i for i, word in enumerate(vocabulary())}).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocabulary()), hidden_size=768, num_hidden_layers=1,
                         num_attention_heads=12, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder)
    return folder


def check_batches(collator, data, texts, rows: torch.Tensor) -> list[str]:
    problems = []
    weak, strong = data.modality.views("unlabeled", rows, ("weak", "strong"), torch.Generator())
    theirs = collator([{"idx": int(i), "text": texts[i][0], "text_s": texts[i][1]} for i in rows])
    if not (torch.equal(weak.ids, theirs["x_ulb_w"]["input_ids"])
            and torch.equal((weak.mask == 1).long(), theirs["x_ulb_w"]["attention_mask"])):
        problems.append("the weak view differs from semilearn's collated x_ulb_w")
    for row, index in enumerate(rows.tolist()):
        ours = strong.ids[row][strong.mask[row] == 1].tolist()
        options = [collator.tokenizer(texts[index][k], max_length=collator.max_length,
                                      truncation=True)["input_ids"] for k in (1, 2)]
        if ours not in options:
            problems.append(f"strong view of sample {index} is neither back-translation")
    return problems


def check_network(semilearn: Path, folder: Path, batch, pooling: str) -> list[str]:
    bert_module = load_file("semilearn_bert", semilearn / "nets/bert/bert.py")
    theirs = bert_module.ClassificationBert(name=str(folder), num_classes=4).eval()
    ours = build_network("bert_base_uncased", 4, None, name_or_path=str(folder), max_length=64,
                         dropout=0.1, pooling=pooling).eval()
    ours.classifier.load_state_dict(theirs.classifier.state_dict())
    with torch.no_grad():
        reference = theirs({"input_ids": batch.ids, "attention_mask": (batch.mask == 1).long()})
        output = ours(batch)
    problems = []
    for name, mine, other in (("features", output.features, reference["feat"]),
                              ("logits", output.logits, reference["logits"])):
        # view_positions sums in another order than torch.mean: equal within float rounding
        same = (torch.equal(mine, other) if pooling == "all_positions"
                else torch.allclose(mine, other, rtol=1e-5, atol=1e-6))
        if not same:
            problems.append(f"{name} differ by {(mine - other).abs().max().item():.3g}")
    matcher = theirs.group_matcher()
    for name, _ in ours.backbone.named_parameters():
        block = re.match(matcher["blocks"], name)
        expected = (0 if re.match(matcher["stem"], name) else
                    int(block.group(1)) + 1 if block else ours.backbone.num_layers)
        if ours.backbone.layer_id(name) != expected:
            problems.append(f"layer of {name}: {ours.backbone.layer_id(name)}, semilearn {expected}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--semilearn", type=Path, default=DEFAULT,
                        help="semilearn 0.3.2's package folder (its site-packages/semilearn)")
    parser.add_argument("--pooling", default="all_positions",
                        choices=["all_positions", "view_positions", "attended"],
                        help="our pooling: all_positions is compared bit for bit, view_positions "
                             "within float rounding (attended: to see a difference found)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = make_bert(root / "bert")
        release = make_release(root / "ag_news")
        spec = get_dataset("ag_news")
        spec.download(root / "raw", mirror=str(release), md5={})
        loaded = spec.load(root / "raw")
        tokenizer = load_tokenizer(str(folder))
        data = text_train_data(loaded, torch.arange(8), tokenizer, 64, "cpu")
        collator = load_collator_module(args.semilearn).DataCollatorWithPadding(tokenizer,
                                                                                max_length=64)
        rows = torch.tensor([3, 17, 0, 42, 8, 91, 55, 60])
        problems = check_batches(collator, data, loaded.train_texts, rows)
        weak = data.modality.views("unlabeled", rows, ("weak",), torch.Generator())[0]
        assert bool((weak.mask == 2).any()), "the batch must hold padding to test the pooling"
        problems += check_network(args.semilearn, folder, weak, args.pooling)
    for problem in problems:
        print(f"DIFFERS: {problem}")
    print("text path: " + ("exact (batches, features, logits, layer ids)" if not problems
                           else f"{len(problems)} difference(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
