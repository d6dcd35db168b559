"""CUDA only (skipped without a GPU): the training step of every algorithm makes no host
synchronisation (issue 6: nothing read back in the hot loop), with the paper settings (bf16
autocast, channels_last) on WRN-28-2 at the CIFAR shape (digits_rgb32, offline)."""
from dataclasses import replace

import pytest
import torch

from semisup.algorithms import ALGORITHMS, build_algorithm
from semisup.data import get_dataset
from semisup.data.image import image_train_data
from semisup.data.splits import make_split
from semisup.models import build_network
from semisup.train import Trainer

from pipeline.config import default_params, default_train_options
from pipeline.runs.train import image_augment, train_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    spec = get_dataset("digits_rgb32")
    root = tmp_path_factory.mktemp("digits_rgb32")
    spec.download(root, **default_params()["datasets"]["digits"])
    raw = spec.load(root)
    split = make_split(raw.train_labels.numpy(), 40, 10, 0, "digits_rgb32")
    raw = replace(raw, test_images=raw.test_images[:64], test_labels=raw.test_labels[:64])
    augment = image_augment(default_train_options("digits_rgb32"))
    return spec, image_train_data(raw, torch.tensor(split["labeled_indices"]), spec.inputs, augment,
                                  True, CUDA)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_training_step_makes_no_host_synchronisation(data, name):
    spec, train_data = data
    config = train_config(default_train_options("digits_rgb32", steps=100, batch_size=8, uratio=2,
                                                precision="bf16", channels_last=True))
    params = {**default_params()["algorithms"][name],
              **{"dash": {"warmup_steps": 1, "steps_per_epoch": 2, "warmup_epochs": 1}}.get(name, {})}
    torch.manual_seed(0)
    algorithm = build_algorithm(name, params, facts=train_data.facts(10), total_steps=100)
    network = build_network("wrn_28_2", 10, spec.inputs, variant="semilearn")
    trainer = Trainer(network, algorithm, train_data, config, 0, CUDA)
    trainer.network.train()
    for _ in range(3):   # first steps: allocations, cuDNN heuristics, lazily made buffers
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            stats = trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(value.is_cuda for value in stats.values())
    assert torch.isfinite(stats["loss"]).item()


@pytest.mark.parametrize("name", ["fixmatch", "remixmatch"])
def test_a_training_step_with_ctaugment_makes_no_host_synchronisation(data, name):
    """CTAugment's strong views, its probe (scored by the EMA network) and the bin update."""
    spec, train_data = data
    options = default_train_options("digits_rgb32", steps=100, batch_size=8, uratio=2,
                                    precision="bf16", channels_last=True,
                                    strong_augment="ctaugment")
    train_data = replace(train_data, modality=replace_augment(train_data.modality, options))
    torch.manual_seed(0)
    algorithm = build_algorithm(name, default_params()["algorithms"][name],
                                facts=train_data.facts(10), total_steps=100)
    network = build_network("wrn_28_2", 10, spec.inputs, variant="semilearn")
    trainer = Trainer(network, algorithm, train_data, train_config(options), 0, CUDA)
    trainer.network.train()
    for _ in range(3):
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            stats = trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(stats["loss"]).item()
    assert (trainer.data.modality.ctaugment.rates < 1).any().item()


def replace_augment(modality, options):
    """The same pools on the device, with the augmentation of `options`."""
    from semisup.data.image import ImageModality

    return ImageModality(modality.pools, get_dataset("digits_rgb32").inputs,
                         image_augment(options), True)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """The tiny BERT and AG News-shaped release of tools/nlp_smoke.py, tokenised on the GPU."""
    from nlp_smoke import make_release, make_tiny_bert

    from semisup.data.text import text_train_data
    from semisup.models.bert import load_tokenizer

    folder = make_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")
    release = make_release(tmp_path_factory.mktemp("release") / "ag_news")
    spec, root = get_dataset("ag_news"), tmp_path_factory.mktemp("raw")
    spec.download(root, mirror=release.as_uri(), md5={})
    data = text_train_data(spec.load(root), torch.arange(0, 96, 12), load_tokenizer(str(folder)),
                           32, CUDA)
    return folder, data


# USB's text settings where the classic ones would rotate images (rot_loss_ratio 0)
TEXT_PARAMS = {"remixmatch": {"lambda_rot": 0.0}}


@pytest.mark.parametrize("name, gradient", [("vat", None), ("mixmatch", "none"),
                                            ("mixmatch", "backbone"), ("remixmatch", "none")])
def test_vat_on_embeddings_and_mixup_of_features_train_bert_under_bf16(text_data, name, gradient):
    """semilearn's vat_embed and mixup_manifold on the GPU with bf16 autocast: finite losses."""
    folder, train_data = text_data
    config = train_config(default_train_options(
        "ag_news", steps=100, batch_size=4, uratio=1, precision="bf16", optimizer="adamw", lr=1e-4,
        layer_decay=0.65, lr_warmup_steps=1))
    params = {**default_params()["algorithms"][name], **TEXT_PARAMS.get(name, {}),
              **({} if gradient is None else {"mixed_features_gradient": gradient})}
    torch.manual_seed(0)
    algorithm = build_algorithm(name, params, facts=train_data.facts(4), total_steps=100)
    network = build_network("bert_base_uncased", 4, None, name_or_path=str(folder), max_length=32,
                            dropout=0.1, pooling="view_positions")
    trainer = Trainer(network, algorithm, train_data, config, 0, CUDA)
    trainer.network.train()
    for _ in range(3):
        stats = trainer.train_step()
    assert all(value.is_cuda for value in stats.values())
    assert torch.isfinite(stats["loss"]).item() and torch.isfinite(stats["loss_unsup"]).item()


@pytest.mark.parametrize("name", ["fixmatch", "simmatch"])
def test_a_small_vit_trains_under_bf16_with_usbs_optimizer(data, name):
    """The ViT of USB's CV task (timm's blocks, fused attention) at the CIFAR shape on the GPU,
    bf16 autocast, AdamW with layer decay and warm-up: a few finite steps (simmatch: a head on
    the class token's features)."""
    spec, train_data = data
    config = train_config(default_train_options(
        "digits_rgb32", steps=100, batch_size=8, uratio=2, precision="bf16", optimizer="adamw",
        lr=1e-3, layer_decay=0.65, lr_warmup_steps=2))
    torch.manual_seed(0)
    algorithm = build_algorithm(name, default_params()["algorithms"][name],
                                facts=train_data.facts(10), total_steps=100)
    network = build_network("vit", 10, spec.inputs, **{
        **default_params()["models"]["vit"], "patch_size": 4, "embed_dim": 32, "depth": 2,
        "num_heads": 2})
    trainer = Trainer(network, algorithm, train_data, config, 0, CUDA)
    trainer.network.train()
    for _ in range(3):
        stats = trainer.train_step()
    assert all(value.is_cuda for value in stats.values())
    assert torch.isfinite(stats["loss"]).item()
