"""HuBERT and wav2vec2 backbones (semisup.models.speech) on tiny models made here and loaded
through the real path (a save_pretrained folder): semilearn's pooling and classifier, the layers
of layer-wise learning-rate decay, the mask option, and the error when the weights are missing."""
from __future__ import annotations

import pytest
import torch

from semisup.data.inputs import WaveBatch
from semisup.models import build_network
from semisup.models.speech import PretrainedModelMissing
from semisup.optim import OptimizerConfig, build_optimizer

from audio_smoke import save_tiny_speech_model   # tools/audio_smoke.py


@pytest.fixture(scope="module", params=["hubert_base", "wav2vec2_base"])
def tiny(request, tmp_path_factory):
    folder = save_tiny_speech_model(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, folder


def network(tiny, **options):
    name, folder = tiny
    return build_network(name, 3, None, **{"pretrained": str(folder), "dropout": 0.1,
                                           "use_mask": False, **options})


def waves(count: int = 2, length: int = 1600) -> WaveBatch:
    return WaveBatch(torch.randn(count, length, generator=torch.Generator().manual_seed(0)),
                     torch.ones(count, length))


def test_the_network_pools_the_last_hidden_state_and_classifies_with_an_mlp(tiny):
    net = network(tiny).eval()
    out = net(waves())
    assert out.logits.shape == (2, 3) and out.features.shape == (2, 16)
    hidden = net.backbone.model(waves().waveform).last_hidden_state
    assert torch.allclose(out.features, hidden.mean(dim=1), atol=1e-6)
    first, activation, last = net.classifier
    assert (first.in_features, first.out_features, last.out_features) == (16, 16, 3)
    assert isinstance(activation, torch.nn.GELU)
    assert net.backbone.model.feature_extractor._requires_grad is False


def test_the_saved_weights_are_the_ones_loaded(tiny):
    _, folder = tiny
    from transformers import AutoModel

    saved = AutoModel.from_pretrained(folder)
    loaded = network(tiny).backbone.model
    for (key, value), (_, other) in zip(saved.state_dict().items(), loaded.state_dict().items(),
                                        strict=True):
        assert torch.equal(value, other), key


def test_layers_number_stem_blocks_and_top_as_semilearns_group_matcher(tiny):
    name, _ = tiny
    backbone = network(tiny).backbone
    assert backbone.num_layers == 3
    assert backbone.layer_id("model.feature_extractor.conv_layers.0.conv.weight") == 0
    assert backbone.layer_id("model.feature_projection.projection.weight") == 0
    assert backbone.layer_id("model.encoder.layers.0.attention.k_proj.weight") == 1
    assert backbone.layer_id("model.encoder.layers.1.final_layer_norm.bias") == 2
    assert backbone.layer_id("model.encoder.layer_norm.weight") == 3
    assert backbone.layer_id("model.encoder.pos_conv_embed.conv.bias") == (
        0 if name == "hubert_base" else 3)


def test_layer_decay_scales_each_blocks_learning_rate(tiny):
    net = network(tiny)
    config = OptimizerConfig(name="adamw", lr=1e-4, weight_decay=2e-5, momentum=0.9,
                             nesterov=False, layer_decay=0.5)
    optimizer = build_optimizer(net, config)
    rates = sorted({group["initial_lr"] for group in optimizer.param_groups})
    assert rates == pytest.approx([1e-4 * 0.5 ** 3, 1e-4 * 0.5 ** 2, 1e-4 * 0.5, 1e-4])


def test_use_mask_pools_the_real_frames_only(tiny):
    net = network(tiny, use_mask=True).eval()
    padded_batch = WaveBatch(torch.cat([waves(1, 800).waveform, torch.zeros(1, 800)], dim=1),
                             torch.cat([torch.ones(1, 800), torch.zeros(1, 800)], dim=1))
    unmasked = network(tiny).eval()
    assert not torch.allclose(net(padded_batch).features, unmasked(padded_batch).features)


def test_gradients_reach_the_input_for_vat(tiny):
    net = network(tiny).eval()
    batch = waves()
    noise = torch.zeros_like(batch.waveform, requires_grad=True)
    logits = net(WaveBatch(batch.waveform + noise, batch.mask)).logits
    (gradient,) = torch.autograd.grad(logits.sum(), noise)
    assert gradient.abs().sum() > 0


def test_missing_weights_name_the_folder_to_fill(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedModelMissing) as error:
        build_network("hubert_base", 3, None, pretrained=str(tmp_path / "nowhere" / "hubert"),
                      dropout=0.1, use_mask=False)
    message = str(error.value)
    assert "facebook/hubert-base-ls960" in message and "models.hubert_base.pretrained" in message


def test_pooled_features_go_back_in_through_the_classifier_alone(tiny):
    """MixUp of features on audio (semilearn's mixup_manifold): only_feat, then only_fc."""
    net = network(tiny).eval()
    out = net(waves())
    again = net(out.features, from_features=True)
    assert torch.equal(again.logits, out.logits) and torch.equal(again.features, out.features)
