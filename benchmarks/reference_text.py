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
  i + 1, the rest on top);
- VAT on text (semilearn's vat_embed, algorithms/vat/vat.py loaded by path, its base classes
  stood in for): one training step of our VAT and of semilearn's train_step on the same weights
  and batches, in eval mode (no dropout) with the same noise, give the same loss, loss terms and
  gradient of every parameter (within TOLERANCE: its L2 normalisation runs in numpy).

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
TOLERANCE = 1e-6


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


def load_semilearn_vat(semilearn: Path):
    """semilearn's VAT class from its file, its imports of semilearn stood in for: AlgorithmBase
    (a plain base: the step reads attributes set here), the registry and the argument helpers."""
    registry = types.SimpleNamespace(register=lambda name: (lambda cls: cls))
    stand_ins = {"semilearn": types.ModuleType("semilearn"),
                 "semilearn.core": types.SimpleNamespace(AlgorithmBase=object),
                 "semilearn.core.utils": types.SimpleNamespace(ALGORITHMS=registry),
                 "semilearn.algorithms": types.ModuleType("semilearn.algorithms"),
                 "semilearn.algorithms.utils": types.SimpleNamespace(SSL_Argument=None, str2bool=bool)}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        return load_file("semilearn_vat", semilearn / "algorithms/vat/vat.py").VAT
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name)
            else:
                sys.modules[name] = module


def semilearn_vat_step(vat_class, model, params: dict, step: int, total_steps: int, x_lb, y_lb,
                       x_ulb, seed: int) -> tuple[dict, dict]:
    """semilearn's VAT train_step with vat_embed on `model`, then its loss's backward."""
    import contextlib

    import torch.nn.functional as F

    algorithm = object.__new__(vat_class)
    algorithm.init(unsup_warm_up=params["rampup_fraction"], vat_eps=params["eps"], vat_embed=True)
    freeze = types.SimpleNamespace(freeze_bn=lambda model: None, unfreeze_bn=lambda model: None)
    vars(algorithm).update(
        model=model, bn_controller=freeze, amp_cm=contextlib.nullcontext, gpu=None, it=step,
        num_train_iter=total_steps, lambda_u=params["lambda_u"], lambda_ent=params["lambda_entropy"],
        ce_loss=F.cross_entropy,   # its ce_loss on hard labels: nll_loss(log_softmax), the same
        process_out_dict=lambda **kwargs: kwargs, process_log_dict=lambda **kwargs: kwargs)
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor   # its .cuda(gpu): the CPU
    try:
        torch.manual_seed(seed)   # its probe's noise: torch's global generator
        out, log = algorithm.train_step(x_lb, y_lb, x_ulb)
    finally:
        torch.Tensor.cuda = cuda
    model.zero_grad(set_to_none=True)
    out["loss"].backward()
    losses = {"loss": out["loss"].item(), "loss_sup": log["sup_loss"], "loss_unsup": log["unsup_loss"],
              "loss_entropy": log["loss_entmin"]}
    return losses, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def check_vat_embed(semilearn: Path, folder: Path, data, labeled_rows, unlabeled_rows,
                    our_eps: float | None = None) -> list[str]:
    """Our VAT step on text against semilearn's, both in eval mode on the same weights (our_eps:
    our side's eps only, to see a difference found)."""
    from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm

    from pipeline.config import default_params

    bert_module = load_file("semilearn_bert", semilearn / "nets/bert/bert.py")
    theirs = bert_module.ClassificationBert(name=str(folder), num_classes=4).eval()
    ours = build_network("bert_base_uncased", 4, None, name_or_path=str(folder), max_length=64,
                         dropout=0.1, pooling="all_positions").eval()
    ours.classifier.load_state_dict(theirs.classifier.state_dict())
    params = {**default_params()["algorithms"]["vat"], "rampup_fraction": 0.1}
    step, total_steps, seed = 3, 20, 7   # past the ramp: every term weighs in
    ours_params = params if our_eps is None else {**params, "eps": our_eps}
    algorithm = build_algorithm("vat", ours_params, facts=data.facts(4), total_steps=total_steps)
    (labeled,) = data.modality.views("train", labeled_rows, ("weak",), torch.Generator())
    (unlabeled,) = data.modality.views("unlabeled", unlabeled_rows, ("weak",), torch.Generator())
    labels = data.train_labels[labeled_rows]
    batch = StepBatch(Side([labeled], labels, labeled_rows),
                      Side([unlabeled], data.unlabeled_labels[unlabeled_rows], unlabeled_rows))
    output = algorithm.training_step(StepContext(ours, step, torch.Generator().manual_seed(seed)), batch)
    output.loss.backward()
    mine = {"loss": output.loss.item(), **{key: output.stats[key].item()
                                           for key in ("loss_sup", "loss_unsup", "loss_entropy")}}
    as_dict = lambda tokens: {"input_ids": tokens.ids, "attention_mask": (tokens.mask == 1).long()}
    other, gradients = semilearn_vat_step(load_semilearn_vat(semilearn), theirs, params, step,
                                          total_steps, as_dict(labeled), labels, as_dict(unlabeled), seed)
    problems = [f"VAT {key}: ours {mine[key]:.9g}, semilearn {other[key]:.9g}" for key in mine
                if abs(mine[key] - other[key]) > TOLERANCE * max(1.0, abs(other[key]))]
    largest = max(max(abs(mine[key] - other[key]) for key in mine),
                  *((p.grad - gradients[n.removeprefix("backbone.")]).abs().max().item()
                    for n, p in ours.named_parameters()
                    if p.grad is not None and n.removeprefix("backbone.") in gradients))
    print(f"VAT on text (vat_embed), one step: largest difference {largest:.1e} (losses and "
          f"{len(gradients)} gradients)")
    for name, parameter in ours.named_parameters():
        theirs_name = name.removeprefix("backbone.")
        found = gradients.get(theirs_name)
        if (parameter.grad is None) != (found is None):
            problems.append(f"VAT gradient of {name}: only one side has one")
        elif found is not None and (parameter.grad - found).abs().max().item() > TOLERANCE:
            problems.append(f"VAT gradient of {name} differs by "
                            f"{(parameter.grad - found).abs().max().item():.3g}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--semilearn", type=Path, default=DEFAULT,
                        help="semilearn 0.3.2's package folder (its site-packages/semilearn)")
    parser.add_argument("--pooling", default="all_positions",
                        choices=["all_positions", "view_positions", "attended"],
                        help="our pooling: all_positions is compared bit for bit, view_positions "
                             "within float rounding (attended: to see a difference found)")
    parser.add_argument("--vat-eps", type=float, default=None,
                        help="our VAT's eps only (semilearn keeps params.yaml's): to see a "
                             "difference found")
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
        if args.pooling == "all_positions":
            problems += check_vat_embed(args.semilearn, folder, data, torch.tensor([0, 1, 2, 3]),
                                        rows[:4], args.vat_eps)
    for problem in problems:
        print(f"DIFFERS: {problem}")
    print("text path: " + ("exact (batches, features, logits, layer ids, VAT's step)" if not problems
                           else f"{len(problems)} difference(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
