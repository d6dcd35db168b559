"""Vision Transformers of USB's CV protocol (semilearn 0.3.2, `semilearn/nets/vit/vit.py`), built
with timm's VisionTransformer, and the pretrained weights USB released for them.

  network                 image   patch  dim  depth  heads  drop_path  USB's weights (pretrain_path)
  vit_tiny_patch2_32      32 px   2      192  12     3      0.1        vit_tiny_patch2_32_mlp_im_1k_32.pth
  vit_small_patch2_32     32 px   2      384  12     6      0.2        vit_small_patch2_32_mlp_im_1k_32.pth
  vit_small_patch16_224   224 px  16     384  12     6      0.2        vit_small_patch16_224_mlp_im_1k_224.pth
  vit_base_patch16_96     96 px   16     768  12     12     0.2        mae_pretrain_vit_base.pth (MAE, 224 px)
  vit                     a ViT of your own size (every option given), e.g. a tiny one for tests

As semilearn's: MLP ratio 4, qkv bias, LayerNorm eps 1e-6, GELU, no layer scale, stochastic depth
rising linearly from 0 to drop_path over the blocks, a class token whose final (normed) state is
the feature vector (global_pool "token": `norm` after the blocks, no `fc_norm`), a linear
classifier on it. The backbone returns the features; the classifier is the Network's.

Weights are loaded as semilearn's `nets/utils.py` `load_checkpoint` does: the file holds
{"model": state_dict}; a `module.` prefix is dropped, and so are the pretraining heads (keys
starting with fc, classifier, mlp, head); a position embedding of another grid (MAE's 14 x 14 for
the 6 x 6 of 96 px) is resized bicubically (align_corners False, no antialiasing). Where this
differs from semilearn, on purpose: a backbone parameter the file lacks is an error (semilearn
loads with strict=False and only prints it), and the file's SHA-256 is checked.

Deliberate differences from semilearn's network, each an option:
- `fused_attention`: timm's attention through torch's scaled_dot_product_attention (fused
  kernels on a GPU); semilearn computes softmax(q k^T * scale) v itself. The same function, other
  rounding (tests/test_vit.py compares the two on the same weights). false: timm's explicit path
  (it scales q before the product: also not semilearn's bits).
- `init`: `semilearn` draws the initial weights as semilearn's constructor does, module by module
  in its order (PyTorch's default Linear and Conv2d initialisation, zero class token and position
  embedding), so the same seed gives the same initial network; `timm` keeps timm's own (truncated
  normal). Pretrained weights replace all but the classifier either way.

Layer ids for layer-wise learning-rate decay (semisup.optim): the embeddings (class token,
position embedding, patch embedding) are layer 0, block i is layer i + 1, the final `norm` joins
the last block, and the classifier is on top (num_layers = depth + 1): semilearn's
`param_groups_layer_decay` with its ViT's `group_matcher`. no_weight_decay: pos_embed, cls_token.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..catalog import ImageInputs
from ..errors import PretrainedWeightsError
from .network import Network


@dataclass(frozen=True)
class Architecture:
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int


# semilearn 0.3.2's nets/vit/vit.py constructors (their drop_path_rate is an option: params.yaml)
ARCHITECTURES = {
    "vit_tiny_patch2_32": Architecture(32, 2, 192, 12, 3),
    "vit_small_patch2_32": Architecture(32, 2, 384, 12, 6),
    "vit_small_patch16_224": Architecture(224, 16, 384, 12, 6),
    "vit_base_patch16_96": Architecture(96, 16, 768, 12, 12),
}
PRETRAINING_HEADS = ("fc", "classifier", "mlp", "head")   # keys semilearn's loader drops
STEM = re.compile(r"^(cls_token|pos_embed|patch_embed)")
BLOCK = re.compile(r"^blocks\.(\d+)\.")


class VisionTransformer(nn.Module):
    """timm's VisionTransformer without its classifier: images -> the class token's features."""

    def __init__(self, architecture: Architecture, in_channels: int, *, drop_path_rate: float,
                 fused_attention: bool, init: str):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer as TimmViT   # slow import

        if init not in ("semilearn", "timm"):
            raise ValueError(f"ViT init must be 'semilearn' or 'timm', got {init!r}")
        # building draws from a copy of the random state; semilearn's draws are made below
        with torch.random.fork_rng(devices=[]):
            self.vit = TimmViT(
                img_size=architecture.img_size, patch_size=architecture.patch_size,
                in_chans=in_channels, num_classes=0, global_pool="token",
                embed_dim=architecture.embed_dim, depth=architecture.depth,
                num_heads=architecture.num_heads, mlp_ratio=4.0, qkv_bias=True,
                drop_path_rate=drop_path_rate,
                weight_init="skip" if init == "semilearn" else "")
        if init == "semilearn":
            self.semilearn_init()
        for block in self.vit.blocks:
            if not hasattr(block.attn, "fused_attn"):   # a timm whose attention has another switch
                raise RuntimeError("timm's Attention has no `fused_attn` switch in this version; "
                                   "fused_attention cannot be honoured (uv.lock pins a timm that has it)")
            block.attn.fused_attn = fused_attention
        self.num_features = architecture.embed_dim
        self.num_layers = architecture.depth + 1

    @torch.no_grad()
    def semilearn_init(self) -> None:
        """semilearn's constructor's random draws, in its order: the patch embedding, then per
        block qkv, proj, fc1, fc2 (LayerNorms ones and zeros, tokens zeros)."""
        vit = self.vit
        vit.patch_embed.proj.reset_parameters()
        nn.init.zeros_(vit.cls_token)
        nn.init.zeros_(vit.pos_embed)
        for block in vit.blocks:
            for layer in (block.norm1, block.attn.qkv, block.attn.proj, block.norm2,
                          block.mlp.fc1, block.mlp.fc2):
                layer.reset_parameters()
        vit.norm.reset_parameters()

    def forward(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) != self.vit.patch_embed.img_size:
            size = self.vit.patch_embed.img_size
            raise ValueError(f"this ViT takes {size[0]}x{size[1]} images, the data gives "
                             f"{images.shape[-2]}x{images.shape[-1]}: resize them (an option of "
                             f"the dataset, as USB resizes EuroSAT and TissueMNIST to 32 px) or "
                             f"choose a network for that size")
        return self.vit(images)   # num_classes 0: the pooled, normed class token

    def no_weight_decay(self) -> set[str]:
        return {"vit.pos_embed", "vit.cls_token"}

    def layer_id(self, name: str) -> int:
        name = name.removeprefix("vit.")
        if STEM.match(name):
            return 0
        if block := BLOCK.match(name):
            return int(block.group(1)) + 1
        if name.startswith("norm."):
            return self.num_layers - 1   # with the last block (timm's MATCH_PREV_GROUP)
        return self.num_layers           # fc_norm (unused with token pooling): with the classifier

    def load_pretrained(self, state: dict[str, Tensor], source: str) -> None:
        """semilearn's load_checkpoint on timm's modules (the key layouts are the same)."""
        from timm.layers import resample_abs_pos_embed

        weights = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            if key.startswith(PRETRAINING_HEADS):
                continue
            if key == "pos_embed" and value.shape != self.vit.pos_embed.shape:
                grid = self.vit.patch_embed.grid_size
                value = resample_abs_pos_embed(value, list(grid), num_prefix_tokens=1,
                                               interpolation="bicubic", antialias=False,
                                               align_corners=False)
            weights[key] = value
        try:
            missing, unexpected = self.vit.load_state_dict(weights, strict=False)
        except RuntimeError as error:   # shapes that do not fit, e.g. 3 input channels for 1
            raise PretrainedWeightsError(f"{source} does not fit this network: {error}") from None
        if missing:
            raise PretrainedWeightsError(
                f"{source} lacks {len(missing)} of the network's weights ({', '.join(missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}): it is not a checkpoint of this network; "
                f"check models.<model>.checkpoint in the config")
        if unexpected:
            print(f"{source}: ignored {len(unexpected)} entries this network does not have "
                  f"({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})", flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_file(checkpoint: str, sha256: str | None, folder: str) -> Path:
    """The local file of `checkpoint` (a path, file:// URL or http(s):// URL; a download goes to
    `folder`/<its file name>, atomically), its SHA-256 checked."""
    parsed = urllib.parse.urlparse(checkpoint)
    if parsed.scheme in ("http", "https"):
        path = Path(folder) / Path(parsed.path).name
        if not path.is_file():
            download(checkpoint, path)
    else:
        path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else checkpoint)
        if not path.is_file():
            raise PretrainedWeightsError(f"the pretrained weights {path} do not exist (from "
                                         f"models.<model>.checkpoint = {checkpoint!r})")
    actual = sha256_of(path)
    if sha256 is None:
        raise PretrainedWeightsError(
            f"no SHA-256 is recorded for the pretrained weights {path} (from {checkpoint}); its "
            f"SHA-256 is {actual}. Once you trust this file (e.g. it came from the URL above), set "
            f"models.<model>.checkpoint_sha256: {actual} in your config")
    if actual != sha256:
        raise PretrainedWeightsError(
            f"the pretrained weights {path} have SHA-256 {actual}, not the expected {sha256} "
            f"(models.<model>.checkpoint_sha256): the file is damaged or another one. Delete it "
            f"and rerun to download it again from {checkpoint}, or fix the checksum in the config")
    return path


def download(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        os.replace(temporary, path)
    except (urllib.error.URLError, OSError) as error:
        Path(temporary).unlink(missing_ok=True)
        raise PretrainedWeightsError(
            f"could not download the pretrained weights {path.name} from {url} ({error}). "
            f"Offline: download that URL on a machine with internet and put the file at "
            f"{path.resolve()} (or set models.<model>.checkpoint to a local path or file:// URL), "
            f"then rerun") from None


def load_checkpoint(checkpoint: str, sha256: str | None, folder: str) -> dict[str, Tensor]:
    path = checkpoint_file(checkpoint, sha256, folder)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # a training checkpoint that also pickles other objects (e.g. its argparse arguments):
        # unpickled in full, which runs code from the file, only because its SHA-256 is the one
        # the config says to trust (checked above)
        content = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict):
        raise PretrainedWeightsError(f"{path} is not a checkpoint as USB released them: a dict "
                                     f"with the network's weights under 'model'")
    return content["model"]


def vision_transformer(architecture: Architecture, num_classes: int, inputs: ImageInputs, *,
                       drop_path_rate: float, fused_attention: bool, init: str, pretrained: bool,
                       checkpoint: str | None, checkpoint_sha256: str | None,
                       checkpoint_dir: str) -> Network:
    """The backbone (pretrained weights loaded when asked), then the classifier: built after the
    backbone as semilearn builds its head, so with init semilearn from the same random draws."""
    backbone = VisionTransformer(architecture, inputs.channels, drop_path_rate=drop_path_rate,
                                 fused_attention=fused_attention, init=init)
    network = Network(backbone, nn.Linear(backbone.num_features, num_classes))
    if pretrained:
        if not checkpoint:
            raise PretrainedWeightsError("pretrained: true needs models.<model>.checkpoint (a "
                                         "path, file:// or https:// URL)")
        backbone.load_pretrained(load_checkpoint(checkpoint, checkpoint_sha256, checkpoint_dir),
                                 checkpoint)
    return network


def released(name: str):
    """The constructor of one of USB's ViTs: its architecture, the options of params.yaml."""
    def build(num_classes: int, inputs: ImageInputs, *, drop_path_rate: float,
              fused_attention: bool, init: str, pretrained: bool, checkpoint: str | None,
              checkpoint_sha256: str | None, checkpoint_dir: str) -> Network:
        return vision_transformer(
            ARCHITECTURES[name], num_classes, inputs, drop_path_rate=drop_path_rate,
            fused_attention=fused_attention, init=init, pretrained=pretrained,
            checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256,
            checkpoint_dir=checkpoint_dir)
    build.__name__ = build.__qualname__ = name
    return build


def vit(num_classes: int, inputs: ImageInputs, *, img_size: int, patch_size: int, embed_dim: int,
        depth: int, num_heads: int, drop_path_rate: float, fused_attention: bool, init: str,
        pretrained: bool, checkpoint: str | None, checkpoint_sha256: str | None,
        checkpoint_dir: str) -> Network:
    """A ViT of your own size (every other choice as USB's)."""
    return vision_transformer(
        Architecture(img_size, patch_size, embed_dim, depth, num_heads), num_classes, inputs,
        drop_path_rate=drop_path_rate, fused_attention=fused_attention, init=init,
        pretrained=pretrained, checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256,
        checkpoint_dir=checkpoint_dir)


MODELS = {"vit_tiny_patch2_32": released("vit_tiny_patch2_32"),
          "vit_small_patch2_32": released("vit_small_patch2_32"),
          "vit_small_patch16_224": released("vit_small_patch16_224"),
          "vit_base_patch16_96": released("vit_base_patch16_96"),
          "vit": vit}
