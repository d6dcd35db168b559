"""Check ssl-repro's WRN variants against the reference codebases' own network files, bit for bit.

For each (reference file, network, variant) it builds both networks from the same seed and
checks: the parameter count, that every parameter and buffer has the same shape and the same
initial value (the PyTorch references draw their initial weights from the same random numbers),
and that both give the same logits, bit for bit, in training mode (batch statistics) and in
evaluation mode after a few training-mode passes (running statistics). Nothing of the references
is copied into this project: point the script at their files.

    pip download semilearn==0.3.2 --no-deps -d /tmp/ref && unzip -q /tmp/ref/*.whl -d /tmp/ref
    git clone https://github.com/TorchSSL/TorchSSL /tmp/TorchSSL
    git clone https://github.com/microsoft/Semi-supervised-learning /tmp/usb
    git -C /tmp/usb show 7c7460f^:semilearn/nets/wrn/wrn.py > /tmp/usb_2022_wrn.py
    git -C /tmp/usb show 7c7460f^:semilearn/nets/wrn/wrn_var.py > /tmp/usb_2022_wrn_var.py
    uv run python benchmarks/reference_networks.py \
        --semilearn /tmp/ref/semilearn/nets/wrn/wrn.py /tmp/ref/semilearn/nets/wrn/wrn_var.py \
        --semilearn-2022 /tmp/usb_2022_wrn.py /tmp/usb_2022_wrn_var.py \
        --torchssl /tmp/TorchSSL/models/nets/wrn.py /tmp/TorchSSL/models/nets/wrn_var.py

The FixMatch TensorFlow network (`fixmatch_tf`) cannot be run here; its structure is checked in
tests/test_models.py.

USB's ViTs (ssl-repro's, built with timm) against semilearn 0.3.2's `nets/vit/vit.py`, loaded with
its `nets/utils.py` `load_checkpoint`: the same initial weights from the same seed, the same
weights after both load one released-format checkpoint made at 224 px (so the 32 and 96 px
networks resize its position embedding), and the largest difference of their outputs:

    uv run python benchmarks/reference_networks.py \
        --semilearn-vit /tmp/ref/semilearn/nets/vit/vit.py /tmp/ref/semilearn/nets/utils.py
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch

from semisup.catalog import DATASETS
from semisup.models import build_network

# (our network, the reference's class in wrn.py / wrn_var.py, its constructor arguments)
NETWORKS = [("wrn_28_2", 0, dict(first_stride=1, depth=28, widen_factor=2), 10, 32),
            ("wrn_28_8", 0, dict(first_stride=1, depth=28, widen_factor=8), 100, 32),
            ("wrn_37_2", 1, dict(first_stride=2, depth=28, widen_factor=2), 10, 96)]


def load_reference(path: Path, name: str) -> types.ModuleType:
    """Import a reference network file on its own; semilearn's only package import (a checkpoint
    loader for pretrained weights) is given a placeholder that is never called."""
    for package in ("semilearn", "semilearn.nets"):
        sys.modules.setdefault(package, types.ModuleType(package))
    utils = types.ModuleType("semilearn.nets.utils")
    utils.load_checkpoint = lambda model, path: model
    sys.modules.setdefault("semilearn.nets.utils", utils)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_class(module: types.ModuleType):
    return getattr(module, "WideResNetVar", None) or module.WideResNet


def logits_of(output):
    return output["logits"] if isinstance(output, dict) else output


def compare(variant: str, files: list[Path], seed: int = 0) -> list[str]:
    lines = []
    for ours_name, file_index, arguments, num_classes, size in NETWORKS:
        module = load_reference(files[file_index], f"reference_{variant}_{file_index}")
        torch.manual_seed(seed)
        reference = reference_class(module)(num_classes=num_classes, **arguments)
        torch.manual_seed(seed)
        ours = build_network(ours_name, num_classes, DATASETS["cifar10"].inputs, variant=variant)
        theirs_state, our_state = reference.state_dict(), ours.state_dict()
        count = lambda model: sum(p.numel() for p in model.parameters())
        same_shapes = [a.shape for a in theirs_state.values()] == [b.shape for b in our_state.values()]
        same_init = same_shapes and all(torch.equal(a, b) for a, b in
                                        zip(theirs_state.values(), our_state.values(), strict=True))
        images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
        reference.train(), ours.train()
        with torch.no_grad():
            for _ in range(3):   # train mode: batch statistics; also moves the running statistics
                same_train = torch.equal(logits_of(reference(images)), ours(images).logits)
            reference.eval(), ours.eval()
            same_eval = torch.equal(logits_of(reference(images)), ours(images).logits)
        lines.append(f"{variant:15s} {ours_name}: parameters {count(reference):,} (reference) / "
                     f"{count(ours):,} (ours); same shapes {same_shapes}, same initial values "
                     f"{same_init}, same logits in train mode {same_train}, in eval mode {same_eval}")
    return lines


VITS = [("vit_tiny_patch2_32", 0.1, 32, dict(patch_size=2, embed_dim=192, num_heads=3)),
        ("vit_small_patch2_32", 0.2, 32, dict(patch_size=2, embed_dim=384, num_heads=6)),
        ("vit_small_patch16_224", 0.2, 224, dict(patch_size=16, embed_dim=384, num_heads=6)),
        ("vit_base_patch16_96", 0.2, 96, dict(patch_size=16, embed_dim=768, num_heads=12))]


def compare_vits(vit_file: Path, utils_file: Path, folder: Path, seed: int = 0) -> list[str]:
    import hashlib
    import warnings

    from timm.models.vision_transformer import VisionTransformer

    utils = load_reference(utils_file, "semilearn.nets.utils")
    sys.modules["semilearn.nets.utils"] = utils
    with warnings.catch_warnings():   # its `timm.models.layers` import is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        reference_vit = load_reference(vit_file, "reference_semilearn_vit")
    inputs, lines = DATASETS["cifar10"].inputs, []
    for name, drop_path_rate, size, shape in VITS:
        torch.manual_seed(seed + 1)   # a pretrained network at 224 px with a 1,000-class head
        pretrained = VisionTransformer(img_size=224, depth=12, num_classes=1000, **shape)
        path = folder / f"{name}_released_format.pth"
        torch.save({"model": pretrained.state_dict()}, path)
        options = dict(drop_path_rate=drop_path_rate, fused_attention=True, init="semilearn",
                       checkpoint_dir=str(folder))
        torch.manual_seed(seed)
        ours = build_network(name, 10, inputs, pretrained=False, checkpoint=None,
                             checkpoint_sha256=None, **options)
        torch.manual_seed(seed)
        theirs = getattr(reference_vit, name)(num_classes=10)
        same_init = all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(),
                                                          ours.state_dict().values(), strict=True))
        torch.manual_seed(seed)
        ours = build_network(name, 10, inputs, pretrained=True, checkpoint=str(path),
                             checkpoint_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                             **options).eval()
        torch.manual_seed(seed)
        theirs = utils.load_checkpoint(getattr(reference_vit, name)(num_classes=10), str(path)).eval()
        same_loaded = all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(),
                                                            ours.state_dict().values(), strict=True))
        images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed + 2))
        with torch.no_grad():
            difference = (ours(images).logits - theirs(images)["logits"]).abs().max().item()
        lines.append(f"{name}: same initial values {same_init}, same weights after loading "
                     f"{same_loaded}, largest logit difference {difference:.2e} (float32 rounding)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for variant in ("semilearn", "semilearn-2022", "torchssl"):
        parser.add_argument(f"--{variant}", nargs=2, type=Path, metavar=("WRN_PY", "WRN_VAR_PY"),
                            help=f"the {variant} reference's wrn.py and wrn_var.py")
    parser.add_argument("--semilearn-vit", nargs=2, type=Path, metavar=("VIT_PY", "UTILS_PY"),
                        help="semilearn 0.3.2's nets/vit/vit.py and nets/utils.py")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.semilearn_vit:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            print("\n".join(compare_vits(*args.semilearn_vit, Path(folder))), flush=True)
    for variant, files in (("semilearn", args.semilearn), ("semilearn_2022", args.semilearn_2022),
                           ("torchssl", args.torchssl)):
        if files:
            print("\n".join(compare(variant, files)), flush=True)


if __name__ == "__main__":
    main()
