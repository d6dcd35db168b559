"""USB's ViTs (semisup.models.vit): semilearn 0.3.2's architecture built with timm, the released
weights loaded through the real path (a local file, a file:// URL) with their checksum, and, where
semilearn 0.3.2's files are installed (its environment, benchmarks/semilearn_side.py), the same
initial weights, parameter groups and outputs as semilearn's own ViT and loader. Offline: the
checkpoints here are tiny timm ViTs saved in the released files' format."""
import hashlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from semisup.catalog import ImageInputs, algorithm_cards
from semisup.errors import PretrainedWeightsError
from semisup.models import build_network
from semisup.optim import OptimizerConfig, parameter_groups

SEMILEARN_ENV = Path.home() / ".cache/ssl-repro/semilearn-0.3.2"
INPUTS = ImageInputs(3, (0.5,) * 3, (0.25,) * 3, horizontal_flip=True)
TINY = dict(img_size=8, patch_size=2, embed_dim=16, depth=2, num_heads=2)
NO_WEIGHTS = dict(pretrained=False, checkpoint=None, checkpoint_sha256=None)


def tiny_vit(num_classes=5, seed=0, **options):
    torch.manual_seed(seed)
    settings = {**TINY, "drop_path_rate": 0.1, "fused_attention": True, "init": "semilearn",
                **NO_WEIGHTS, "checkpoint_dir": "unused", **options}
    return build_network("vit", num_classes, INPUTS, **settings)


def released_checkpoint(path: Path, img_size: int = 8, seed: int = 1) -> str:
    """A tiny timm ViT with a pretraining head, saved as USB released its weights ({"model":
    state_dict}, DataParallel's `module.` prefix); returns its SHA-256."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    pretrained = VisionTransformer(img_size=img_size, patch_size=2, embed_dim=16, depth=2,
                                   num_heads=2, num_classes=1000)
    torch.save({"model": {f"module.{k}": v for k, v in pretrained.state_dict().items()}}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_checkpoint(checkpoint: str, sha256: str | None, folder: Path, **options):
    return tiny_vit(pretrained=True, checkpoint=checkpoint, checkpoint_sha256=sha256,
                    checkpoint_dir=str(folder), **options)


def semilearn_file(relative: str) -> Path:
    found = sorted(SEMILEARN_ENV.glob(f"lib/python3*/site-packages/semilearn/{relative}"))
    if not found:
        pytest.skip(f"semilearn 0.3.2 is not installed in {SEMILEARN_ENV} "
                    f"(benchmarks/semilearn_side.py makes that environment)")
    return found[0]


@pytest.fixture(scope="module")
def semilearn():
    """semilearn's nets/vit/vit.py and nets/utils.py (load_checkpoint, param_groups_layer_decay),
    imported on their own (with this project's timm)."""
    vit_path, utils_path = semilearn_file("nets/vit/vit.py"), semilearn_file("nets/utils.py")
    saved = {name: sys.modules.get(name) for name in ("semilearn", "semilearn.nets",
                                                      "semilearn.nets.utils")}
    for package in ("semilearn", "semilearn.nets"):
        sys.modules[package] = types.ModuleType(package)
    modules = {}
    try:
        for name, path in (("semilearn.nets.utils", utils_path), ("semilearn_vit", vit_path)):
            spec = importlib.util.spec_from_file_location(name, path)
            modules[name] = importlib.util.module_from_spec(spec)
            sys.modules[name] = modules[name]
            with warnings.catch_warnings():   # its `timm.models.layers` import is deprecated
                warnings.simplefilter("ignore", FutureWarning)
                spec.loader.exec_module(modules[name])
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return types.SimpleNamespace(vit=modules["semilearn_vit"], utils=modules["semilearn.nets.utils"])


def semilearn_tiny(semilearn, num_classes=5, seed=0):
    torch.manual_seed(seed)
    return semilearn.vit.VisionTransformer(**TINY, drop_path_rate=0.1, num_classes=num_classes)


def ours_by_semilearn_name(network) -> dict[str, torch.Tensor]:
    state = network.state_dict()
    return {name.removeprefix("backbone.vit.").replace("classifier.", "head."): value
            for name, value in state.items()}


@pytest.mark.parametrize("name, expected", [
    ("vit_tiny_patch2_32", 5_392_714), ("vit_small_patch2_32", 21_402_250),
    ("vit_small_patch16_224", 21_669_514), ("vit_base_patch16_96", 85_683_466)])
def test_released_architectures_have_semilearns_parameter_counts(name, expected):
    """Counted with 10 classes on semilearn 0.3.2's vit_* constructors."""
    options = dict(drop_path_rate=0.2, fused_attention=True, init="timm", **NO_WEIGHTS,
                   checkpoint_dir="unused")
    network = build_network(name, 10, INPUTS, **options)
    assert sum(p.numel() for p in network.parameters()) == expected


def test_backbone_returns_the_normed_class_token_and_numbers_its_layers():
    network = tiny_vit().eval()
    images = torch.randn(3, 3, 8, 8)
    output = network(images)
    assert output.features.shape == (3, 16) and output.logits.shape == (3, 5)
    vit = network.backbone.vit
    tokens = vit.norm(vit.blocks(vit._pos_embed(vit.patch_embed(images))))
    torch.testing.assert_close(output.features, tokens[:, 0])
    backbone = network.backbone
    assert backbone.num_layers == 3
    names = ("vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight",
             "vit.blocks.0.attn.qkv.weight", "vit.blocks.1.mlp.fc2.bias", "vit.norm.weight")
    assert [backbone.layer_id(name) for name in names] == [0, 0, 0, 1, 2, 2]
    assert backbone.no_weight_decay() == {"vit.pos_embed", "vit.cls_token"}


def test_images_of_another_size_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="takes 8x8 images, the data gives 28x28: resize them"):
        tiny_vit()(torch.zeros(2, 3, 28, 28))


def test_layer_decay_groups_scale_each_layer_and_exempt_tokens_norms_and_biases():
    network = tiny_vit()
    groups = parameter_groups(network, OptimizerConfig("adamw", lr=1.0, weight_decay=0.05,
                                                       momentum=0.9, nesterov=False, layer_decay=0.5))
    names = {id(p): n for n, p in network.named_parameters()}
    by_name = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_name["backbone.vit.pos_embed"] == (0.125, 0.0)
    assert by_name["backbone.vit.patch_embed.proj.weight"] == (0.125, 0.05)
    assert by_name["backbone.vit.blocks.0.attn.qkv.weight"] == (0.25, 0.05)
    assert by_name["backbone.vit.blocks.1.attn.qkv.bias"] == (0.5, 0.0)
    assert by_name["backbone.vit.norm.weight"] == (0.5, 0.0)
    assert by_name["classifier.weight"] == (1.0, 0.05)


def test_released_weights_load_from_a_local_file_and_a_file_url(tmp_path):
    path = tmp_path / "tiny_mlp_im_1k_8.pth"
    sha256 = released_checkpoint(path)
    expected = torch.load(path, weights_only=True)["model"]
    for checkpoint in (str(path), path.as_uri()):
        network = with_checkpoint(checkpoint, sha256, tmp_path / "downloads")
        state = network.backbone.vit.state_dict()
        assert all(torch.equal(state[k.removeprefix("module.")], v) for k, v in expected.items()
                   if not k.startswith("module.head"))
    # the pretraining head is dropped: the classifier keeps its own initial weights
    assert torch.equal(network.classifier.weight, tiny_vit().classifier.weight)
    assert not (tmp_path / "downloads").exists()   # a local file is read where it is


def test_a_checkpoint_that_pickles_more_than_tensors_loads_once_its_checksum_matches(tmp_path):
    """e.g. a training script's whole checkpoint, its argparse arguments included."""
    import argparse

    path = tmp_path / "with_args.pth"
    released_checkpoint(path)
    content = torch.load(path, weights_only=True)
    torch.save({**content, "args": argparse.Namespace(lr=0.1)}, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    network = with_checkpoint(str(path), sha256, tmp_path)
    assert torch.equal(network.backbone.vit.cls_token, content["model"]["module.cls_token"])


def test_a_position_embedding_of_another_grid_is_resized(tmp_path):
    path = tmp_path / "pretrained_at_16px.pth"
    sha256 = released_checkpoint(path, img_size=16)   # 8 x 8 patches -> this network's 4 x 4
    network = with_checkpoint(str(path), sha256, tmp_path)
    assert network.backbone.vit.pos_embed.shape == (1, 17, 16)
    saved = torch.load(path, weights_only=True)["model"]["module.pos_embed"]
    assert torch.equal(network.backbone.vit.pos_embed[:, 0], saved[:, 0])   # the class token's


def test_a_checksum_mismatch_is_refused_naming_the_file_and_both_digests(tmp_path):
    path = tmp_path / "weights.pth"
    sha256 = released_checkpoint(path)
    wrong = "0" * 64
    with pytest.raises(PretrainedWeightsError) as error:
        with_checkpoint(str(path), wrong, tmp_path)
    message = str(error.value)
    assert str(path) in message and sha256 in message and wrong in message
    assert "checkpoint_sha256" in message


def test_a_file_without_a_recorded_checksum_is_refused_with_its_digest(tmp_path):
    path = tmp_path / "weights.pth"
    sha256 = released_checkpoint(path)
    with pytest.raises(PretrainedWeightsError, match=f"checkpoint_sha256: {sha256}"):
        with_checkpoint(path.as_uri(), None, tmp_path)


def test_offline_the_error_names_the_file_the_url_and_where_to_put_it(tmp_path):
    url = "http://127.0.0.1:9/releases/vit_small_patch2_32_mlp_im_1k_32.pth"   # nothing listens
    folder = tmp_path / "pretrained"
    with pytest.raises(PretrainedWeightsError) as error:
        with_checkpoint(url, "0" * 64, folder)
    message = str(error.value)
    assert url in message and str(folder.resolve() / "vit_small_patch2_32_mlp_im_1k_32.pth") in message
    assert not list(folder.iterdir())   # no partial file left behind


def test_weights_are_downloaded_once_from_their_url_into_the_folder(tmp_path):
    """A local HTTP server stands in for GitHub's release URL."""
    import functools
    import http.server
    import threading

    served = tmp_path / "release"
    served.mkdir()
    sha256 = released_checkpoint(served / "tiny_mlp_im_1k_8.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny_mlp_im_1k_8.pth"
        folder = tmp_path / "pretrained"
        network = with_checkpoint(url, sha256, folder)
        assert [path.name for path in folder.iterdir()] == ["tiny_mlp_im_1k_8.pth"]
        assert hashlib.sha256((folder / "tiny_mlp_im_1k_8.pth").read_bytes()).hexdigest() == sha256
    finally:
        server.shutdown()
        server.server_close()
    saved = torch.load(served / "tiny_mlp_im_1k_8.pth", weights_only=True)["model"]
    assert torch.equal(network.backbone.vit.pos_embed, saved["module.pos_embed"])
    # the server is gone: the downloaded file is used
    assert torch.equal(with_checkpoint(url, sha256, folder).backbone.vit.pos_embed, saved["module.pos_embed"])


def test_a_file_placed_where_downloads_go_is_used_offline(tmp_path):
    folder = tmp_path / "pretrained"
    folder.mkdir()
    sha256 = released_checkpoint(folder / "tiny.pth")
    network = with_checkpoint("http://127.0.0.1:9/v.0.0.0/tiny.pth", sha256, folder)
    saved = torch.load(folder / "tiny.pth", weights_only=True)["model"]
    assert torch.equal(network.backbone.vit.cls_token, saved["module.cls_token"])


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(PretrainedWeightsError, match=r"lacks .* of the network's weights"):
        with_checkpoint(str(path), sha256, tmp_path)


def test_a_checkpoint_for_other_images_is_refused(tmp_path):
    """A checkpoint for 3-channel images cannot initialise a network for 1-channel ones."""
    path = tmp_path / "rgb.pth"
    sha256 = released_checkpoint(path)
    settings = {**TINY, "drop_path_rate": 0.1, "fused_attention": True, "init": "semilearn",
                "pretrained": True, "checkpoint": str(path), "checkpoint_sha256": sha256,
                "checkpoint_dir": str(tmp_path)}
    gray = ImageInputs(1, (0.5,), (0.25,), horizontal_flip=False)
    with pytest.raises(PretrainedWeightsError, match=r"does not fit this network(.|\n)*patch_embed"):
        build_network("vit", 5, gray, **settings)


def test_same_initial_weights_as_semilearns_vit_from_the_same_seed(semilearn):
    ours, theirs = ours_by_semilearn_name(tiny_vit()), semilearn_tiny(semilearn).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


@pytest.mark.parametrize("fused_attention", [True, False])
def test_same_outputs_as_semilearns_vit_on_the_same_pretrained_weights(semilearn, tmp_path,
                                                                       fused_attention):
    """Both load the same released-format file with their own loader (semilearn's
    load_checkpoint, the position embedding resized); outputs agree to float32 rounding."""
    path = tmp_path / "pretrained_at_16px.pth"
    sha256 = released_checkpoint(path, img_size=16)
    ours = with_checkpoint(str(path), sha256, tmp_path, fused_attention=fused_attention).eval()
    theirs = semilearn.utils.load_checkpoint(semilearn_tiny(semilearn), str(path)).eval()
    ours_state, theirs_state = ours_by_semilearn_name(ours), theirs.state_dict()
    assert all(torch.equal(ours_state[name], theirs_state[name]) for name in theirs_state)
    images = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output, reference = ours(images), theirs(images)
    torch.testing.assert_close(output.features, reference["feat"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.logits, reference["logits"], rtol=1e-5, atol=1e-5)
    evaluated = output.logits
    ours.train(), theirs.train()   # stochastic depth: the same draws in the same order
    with torch.no_grad():
        torch.manual_seed(4)
        output = ours(images)
        torch.manual_seed(4)
        reference = theirs(images)
    assert not torch.allclose(output.logits, evaluated)   # some paths were dropped
    torch.testing.assert_close(output.logits, reference["logits"], rtol=1e-5, atol=1e-5)


def test_same_layer_decay_groups_as_semilearns_param_groups_layer_decay(semilearn):
    ours, theirs = tiny_vit(), semilearn_tiny(semilearn)
    config = OptimizerConfig("adamw", lr=5e-4, weight_decay=5e-4, momentum=0.9, nesterov=False,
                             layer_decay=0.65)
    names = {id(p): n for n, p in ours.named_parameters()}
    our_groups = {names[id(p)].removeprefix("backbone.vit.").replace("classifier.", "head."):
                  (g["lr"], g["weight_decay"]) for g in parameter_groups(ours, config) for p in g["params"]}
    groups = semilearn.utils.param_groups_layer_decay(theirs, 5e-4, 5e-4, theirs.no_weight_decay(), 0.65)
    their_names = {id(p): n for n, p in theirs.named_parameters()}
    their_groups = {their_names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert our_groups == their_groups


@pytest.mark.slow
def test_smoke_study_trains_a_pretrained_tiny_vit_through_the_workflow(tmp_path):
    """configs/usb-cv-smoke.yaml end to end (Snakemake, MLflow, reports) with the pretrained path:
    a tiny ViT for the 1-channel 8x8 digits saved as USB released its weights, loaded by each job
    with its checksum; AdamW with layer decay and warm-up, CoMatch's projection head and EMA."""
    import json

    import yaml
    from timm.models.vision_transformer import VisionTransformer

    from conftest import snakemake
    from pipeline.config import ROOT

    torch.manual_seed(3)
    pretrained = VisionTransformer(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2,
                                   num_heads=2, num_classes=1000)
    torch.save({"model": pretrained.state_dict()}, tmp_path / "tiny_vit.pth")
    sha256 = hashlib.sha256((tmp_path / "tiny_vit.pth").read_bytes()).hexdigest()
    pretrained_config = {"models": {"vit": {"pretrained": True, "checkpoint": "tiny_vit.pth",
                                            "checkpoint_sha256": sha256}}}
    (tmp_path / "pretrained.yaml").write_text(yaml.safe_dump(pretrained_config))
    result = snakemake(tmp_path, "--cores", "2", "--configfile",
                       str(ROOT / "configs/usb-cv-smoke.yaml"), "pretrained.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "reports/usb-cv-smoke/metrics.json").read_text())
    assert set(metrics["digits-50"]) == {"supervised", "fixmatch", "comatch"}
    cells = metrics["digits-50"]   # 90 % is chance; CoMatch's EMA of 0.999 lags 900 steps
    assert cells["supervised"]["ema/best_error"] < 80 and cells["fixmatch"]["ema/best_error"] < 80
    assert cells["comatch"]["raw/best_error"] < 80
    run = json.loads((tmp_path / "results/usb-cv-smoke/digits-50/comatch/seed0/metrics.json")
                     .read_text())["run"]
    assert run["model"] == "vit" and run["model_options"]["checkpoint_sha256"] == sha256
    assert (run["train"]["optimizer"], run["train"]["layer_decay"]) == ("adamw", 0.65)
    assert run["train"]["ema_decay"] == 0.999   # CoMatch's, as USB's; the others 0



@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from pipeline.config import default_params
    from semisup.data import get_dataset

    spec, root = get_dataset("digits"), tmp_path_factory.mktemp("digits")
    options = default_params()["datasets"]["digits"]
    spec.download(root, **options)
    return spec, spec.load(root, **options)


@pytest.mark.parametrize("name", sorted(algorithm_cards()))
def test_every_algorithm_trains_a_tiny_vit_with_usbs_optimizer(digits, name):
    """A few steps of each registered algorithm on the digits: its heads on the ViT's features,
    AdamW with layer decay and warm-up, USB's EMA settings; the losses stay finite."""
    from dataclasses import replace

    from pipeline.config import default_params, default_train_options
    from pipeline.runs.train import image_augment, train_config
    from semisup.algorithms import build_algorithm
    from semisup.data.image import image_train_data
    from semisup.data.splits import make_split
    from semisup.train import Trainer

    spec, data = digits
    options = default_train_options(
        "digits", steps=4, batch_size=4, uratio=1, eval_every=4, log_every=2, checkpoint_every=4,
        optimizer="adamw", lr=1e-3, layer_decay=0.65, lr_warmup_steps=2, last_k=1,
        ema_decay=0.999 if name in ("meanteacher", "comatch", "simmatch") else 0.0)
    split = make_split(data.train_labels.numpy(), 20, 10, 0, "digits")
    train_data = image_train_data(
        replace(data, test_images=data.test_images[:32], test_labels=data.test_labels[:32]),
        torch.tensor(split["labeled_indices"]), spec.inputs, image_augment(options), False,
        torch.device("cpu"))
    torch.manual_seed(0)
    network = build_network("vit", 10, spec.inputs, **{**default_params()["models"]["vit"], **TINY})
    labeled_set = "all" if name == "fullysupervised" else "split"
    algorithm = build_algorithm(name, default_params()["algorithms"][name],
                                facts=train_data.facts(10, labeled_set), total_steps=4)
    logged = []
    Trainer(network, algorithm, train_data, train_config(options), 0, torch.device("cpu"),
            log=lambda step, metrics: logged.append(metrics)).fit()
    losses = [float(value) for metrics in logged for key, value in metrics.items() if "loss" in key]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
