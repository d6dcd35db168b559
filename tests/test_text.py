"""The text data layer, USB's NLP release format and the BERT network, on a tiny BERT (hidden
16, 2 layers) and tokenizer saved with save_pretrained and loaded through the real path."""
from pathlib import Path

import pytest
import torch

from nlp_smoke import make_release, make_tiny_bert
from semisup.catalog import algorithm_cards
from semisup.data import get_dataset
from semisup.data.inputs import TokenBatch, cat_inputs
from semisup.data.text import (RaggedTokens, TextModality, TokenizedText, text_train_data,
                               tokenize)
from semisup.errors import DatasetError, PretrainedError
from semisup.models import build_network
from semisup.models.bert import load_tokenizer
from semisup.optim import OptimizerConfig, build_optimizer


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("release") / "ag_news")


@pytest.fixture(scope="module")
def ag_news(release, tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    spec = get_dataset("ag_news")
    files = spec.download(root, mirror=release.as_uri(), md5={})
    assert [path.name for path in files] == ["train.json", "dev.json", "test.json"]
    return spec.load(root)


def test_ragged_tokens_pad_each_batch_to_its_longest_sequence_with_zeros():
    tokens = RaggedTokens.from_lists([[2, 7, 3], [2, 3], [2, 5, 6, 8, 3]])
    batch = tokens.batch(torch.tensor([1, 0]))
    assert batch.ids.tolist() == [[2, 3, 0], [2, 7, 3]]
    assert batch.mask.tolist() == [[1, 1, 2], [1, 1, 1]]   # 2: the view's own padding
    assert tokens.batch(torch.tensor([2])).ids.tolist() == [[2, 5, 6, 8, 3]]


def test_release_files_load_in_file_order_with_dev_as_validation(ag_news, release):
    import json

    train = json.loads((release / "train.json").read_text())
    assert ag_news.train_texts[0] == (train["0"]["ori"], train["0"]["aug_0"], train["0"]["aug_1"])
    assert ag_news.train_labels.tolist() == [int(s["label"]) for s in train.values()]
    assert (len(ag_news.train_texts), len(ag_news.validation_texts), len(ag_news.test_texts)) == (
        96, 24, 40)
    assert ag_news.num_classes == 4


def test_download_without_a_mirror_names_the_files_and_the_folder(tmp_path):
    with pytest.raises(DatasetError) as error:
        get_dataset("yahoo_answers").download(tmp_path, mirror=None, md5={})
    message = str(error.value)
    assert "train.json, dev.json, test.json" in message and str(tmp_path.resolve()) in message
    assert "usbdata.tar.gz" in message and "datasets.yahoo_answers.mirror" in message
    with pytest.raises(DatasetError, match=r"preprocess_aclimdb\.py"):
        get_dataset("imdb").download(tmp_path / "imdb", mirror=None, md5={})


def test_a_wrong_md5_deletes_the_file(release, tmp_path):
    with pytest.raises(DatasetError, match="expected 0123"):
        get_dataset("ag_news").download(tmp_path, mirror=str(release), md5={"dev.json": "0123"})
    assert not (tmp_path / "dev.json").exists()


def test_tokenised_once_truncated_to_max_length_as_the_collator(ag_news, tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert))
    tokens = TokenizedText.of(ag_news, tokenizer, max_length=5)
    expected = tokenizer(ag_news.train_texts[0][0], max_length=5, truncation=True)["input_ids"]
    assert tokens.train.batch(torch.tensor([0])).ids[0].tolist()[:len(expected)] == expected
    assert int(tokens.train.lengths.max()) == 5
    assert expected[0] == tokenizer.cls_token_id and expected[-1] == tokenizer.sep_token_id


def test_weak_is_the_original_and_strong_a_back_translation(ag_news, tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert))
    modality = TextModality(TokenizedText.of(ag_news, tokenizer, max_length=64))
    indices = torch.arange(96)
    generator = torch.Generator().manual_seed(0)
    weak, strong, other = modality.views("unlabeled", indices, ("weak", "strong", "strong"), generator)

    def text(batch: TokenBatch, row: int) -> str:
        ids = batch.ids[row][batch.mask[row] == 1].tolist()
        return tokenizer.decode(ids, skip_special_tokens=True)

    for row in range(96):
        original, aug_0, aug_1 = ag_news.train_texts[row]
        assert text(weak, row) == original
        assert {text(strong, row), text(other, row)} == {aug_0, aug_1} or aug_0 == aug_1
    first = [text(strong, row) == ag_news.train_texts[row][1] for row in range(96)]
    assert 20 < sum(first) < 76   # drawn per sample, about half each


def test_strong_views_follow_the_generator(ag_news, tiny_bert):
    modality = TextModality(TokenizedText.of(ag_news, load_tokenizer(str(tiny_bert)), 64))
    draw = lambda seed: modality.views("train", torch.arange(96), ("strong",),
                                       torch.Generator().manual_seed(seed))[0].ids
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    with pytest.raises(ValueError, match="no back-translations"):
        modality.views("test", torch.arange(3), ("strong",), torch.Generator())


def test_evaluation_batches_are_the_originals_in_order(ag_news, tiny_bert):
    data = text_train_data(ag_news, torch.tensor([0, 1]), load_tokenizer(str(tiny_bert)), 64, "cpu")
    batches = list(data.modality.batches("validation", 10))
    assert [len(batch) for batch in batches] == [10, 10, 4]
    assert torch.equal(data.validation_labels, ag_news.validation_labels)
    assert sum(len(batch) for batch in data.modality.batches("test", 16)) == 40


def bert(tiny_bert: Path, pooling: str = "view_positions"):
    return build_network("bert_base_uncased", 4, None, name_or_path=str(tiny_bert), max_length=64,
                         dropout=0.1, pooling=pooling)


def test_bert_features_are_the_mean_of_the_last_hidden_state_and_a_two_layer_classifier(tiny_bert):
    """A view of 4 tokens and 1 of its own padding (mask 2), joined to a longer view (mask 0)."""
    torch.manual_seed(0)
    network = bert(tiny_bert).eval()
    batch = TokenBatch(ids=torch.tensor([[2, 7, 9, 3, 0, 0]]), mask=torch.tensor([[1, 1, 1, 1, 2, 0]]))
    output = network(batch)
    attended = torch.tensor([[1, 1, 1, 1, 0, 0]])
    hidden = network.backbone.bert(input_ids=batch.ids, attention_mask=attended).last_hidden_state
    torch.testing.assert_close(output.features, hidden[:, :5].mean(1))   # the view's padding too
    assert output.logits.shape == (1, 4) and output.features.shape == (1, 16)
    assert [type(layer).__name__ for layer in network.classifier] == ["Linear", "GELU", "Linear"]
    for pooling, positions in (("all_positions", 6), ("attended", 4)):
        other = bert(tiny_bert, pooling).eval()
        other.load_state_dict(network.state_dict())
        torch.testing.assert_close(other(batch).features, hidden[:, :positions].mean(1))


def test_view_positions_features_do_not_depend_on_the_views_joined_to_it(ag_news, tiny_bert):
    data = text_train_data(ag_news, torch.arange(8), load_tokenizer(str(tiny_bert)), 64, "cpu")
    rows = torch.tensor([0, 1, 2, 3])
    weak, strong = data.modality.views("unlabeled", rows, ("weak", "strong"), torch.Generator())
    long = data.modality.views("unlabeled", torch.arange(96), ("weak",), torch.Generator())[0]
    network = bert(tiny_bert).eval()
    alone = network(weak).features
    joined = network(cat_inputs([weak, strong, long])).features[:4]
    torch.testing.assert_close(joined, alone)
    if int(long.ids.shape[1]) > int(weak.ids.shape[1]):   # the join padded the weak view
        semilearn_as_written = bert(tiny_bert, "all_positions").eval()
        semilearn_as_written.load_state_dict(network.state_dict())
        assert not torch.allclose(semilearn_as_written(cat_inputs([weak, long])).features[:4],
                                  semilearn_as_written(weak).features)


def test_bert_returns_the_embedding_layers_output_and_takes_it_back_as_semilearns_vat_embed(
        tiny_bert):
    """hidden_states[0] of the same pass; fed back as inputs_embeds, transformers adds positions
    and token types and normalises again (semilearn's vat_embed), so it is not the clean pass."""
    from semisup.data.inputs import EmbeddedTokens

    torch.manual_seed(0)
    network = bert(tiny_bert).eval()
    batch = TokenBatch(ids=torch.tensor([[2, 7, 9, 3, 0]]), mask=torch.tensor([[1, 1, 1, 1, 2]]))
    output = network(batch, want=("input_embeddings",))
    embeddings = output.heads["input_embeddings"]
    hidden = network.backbone.bert(input_ids=batch.ids, attention_mask=(batch.mask == 1).long(),
                                   output_hidden_states=True).hidden_states
    torch.testing.assert_close(embeddings, hidden[0])
    torch.testing.assert_close(output.logits, network(batch).logits)
    again = network(EmbeddedTokens(embeddings, batch.mask))
    twice = network.backbone.bert(inputs_embeds=embeddings, attention_mask=(batch.mask == 1).long())
    torch.testing.assert_close(again.features, twice.last_hidden_state.mean(1))
    assert not torch.allclose(again.logits, output.logits)


def test_bert_layers_for_layer_wise_decay(tiny_bert):
    network = bert(tiny_bert)
    backbone = network.backbone
    assert backbone.num_layers == 3
    assert backbone.layer_id("bert.embeddings.word_embeddings.weight") == 0
    assert backbone.layer_id("bert.encoder.layer.1.output.dense.weight") == 2
    assert backbone.layer_id("bert.pooler.dense.weight") == 3
    optimizer = build_optimizer(network, OptimizerConfig("adamw", 1e-4, 5e-4, 0.9, False, 0.5))
    lrs = sorted({group["lr"] for group in optimizer.param_groups})
    assert lrs == pytest.approx([0.125e-4, 0.25e-4, 0.5e-4, 1e-4])   # layers 0 .. 3 = top


def test_joined_views_pad_with_the_pad_id(tiny_bert):
    a = TokenBatch(ids=torch.tensor([[2, 3]]), mask=torch.tensor([[1, 1]]))
    b = TokenBatch(ids=torch.tensor([[2, 5, 6, 3]]), mask=torch.tensor([[1, 1, 1, 1]]))
    joined = cat_inputs([a, b])
    assert joined.ids.tolist() == [[2, 3, 0, 0], [2, 5, 6, 3]]
    assert joined.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert load_tokenizer(str(tiny_bert)).pad_token_id == 0


def test_a_missing_model_names_the_folder_to_put_it_in(tmp_path, monkeypatch):
    import huggingface_hub

    # huggingface_hub reads HF_HUB_OFFLINE when it is first imported, which an earlier test may
    # have done: without both, the hub is tried over the network (23 s of time-outs in the suite)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedError) as error:
        build_network("bert_base_uncased", 2, None, name_or_path="bert-base-uncased",
                      max_length=512, dropout=0.1, pooling="view_positions")
    assert "data/pretrained/bert-base-uncased" in str(error.value)
    assert "name_or_path" in str(error.value)
    with pytest.raises(PretrainedError, match="tokenizer"):
        load_tokenizer(str(tmp_path / "nothing-here"))


def test_max_length_beyond_the_position_embeddings_is_refused(tiny_bert):
    with pytest.raises(PretrainedError, match="at most 64"):
        build_network("bert_base_uncased", 2, None, name_or_path=str(tiny_bert), max_length=512,
                      dropout=0.1, pooling="all_positions")


# USB's NLP settings where the classic ones would rotate images (rot_loss_ratio 0.0)
TEXT_SETTINGS = {"crmatch": {"lambda_rot": 0.0}, "remixmatch": {"lambda_rot": 0.0}}


def text_trainer(algorithm_name: str, ag_news, tiny_bert, steps: int = 2, **trainer_options):
    from semisup.algorithms import ALGORITHMS, build_algorithm
    from semisup.train import Trainer

    from pipeline.config import default_params, default_train_options
    from pipeline.runs.train import train_config

    data = text_train_data(ag_news, torch.arange(0, 96, 12), load_tokenizer(str(tiny_bert)), 32,
                           "cpu")
    options = default_train_options("ag_news", steps=steps, batch_size=4, uratio=1, eval_every=2,
                                    log_every=1, checkpoint_every=2, last_k=1, optimizer="adamw",
                                    lr=1e-4, layer_decay=0.65, eval_batch_size=8, lr_warmup_steps=1)
    torch.manual_seed(0)
    network = bert(tiny_bert)
    params = {**default_params()["algorithms"][algorithm_name],
              **TEXT_SETTINGS.get(algorithm_name, {})}
    labeled_set = ALGORITHMS[algorithm_name].labeled_set
    algorithm = build_algorithm(algorithm_name, params, facts=data.facts(4, labeled_set),
                                total_steps=steps)
    return Trainer(network, algorithm, data, train_config(options), 0, torch.device("cpu"),
                   **trainer_options)


def two_steps(algorithm_name: str, ag_news, tiny_bert):
    return text_trainer(algorithm_name, ag_news, tiny_bert).fit()


@pytest.mark.parametrize("algorithm_name", sorted(algorithm_cards()))
def test_every_algorithm_trains_unchanged_on_text(algorithm_name, ag_news, tiny_bert):
    result = two_steps(algorithm_name, ag_news, tiny_bert)
    assert [point["step"] for point in result.curve] == [2.0]
    assert "ema/at_best_validation_error" in result.metrics


def step_on_text(run, labels=(0, 1, 2, 3)):
    """A StepBatch of the run's data: four labeled texts, four unlabeled ones, the run's views."""
    from semisup.algorithms import Side, StepBatch

    modality, views, generator = run.data.modality, run.algorithm.views, torch.Generator().manual_seed(0)
    indices = torch.arange(4)
    return StepBatch(Side(modality.views("train", indices * 12, views.labeled, generator),
                          torch.tensor(labels), indices),
                     Side(modality.views("unlabeled", indices + 1, views.unlabeled, generator),
                          torch.full((4,), -1), indices + 1))


@pytest.mark.parametrize("algorithm_name, gradient, trains_bert", [
    ("mixmatch", "none", False), ("mixmatch", "backbone", True), ("remixmatch", "none", True)])
def test_mixup_on_text_mixes_berts_pooled_features_never_token_ids(algorithm_name, gradient,
                                                                    trains_bert, ag_news, tiny_bert):
    """semilearn's MixMatch on text trains the classifier alone (its mix is no-grad); its
    ReMixMatch trains BERT through the pre-mixup term."""
    from semisup.algorithms import StepContext

    run = text_trainer(algorithm_name, ag_news, tiny_bert)
    run.algorithm.mixed_features_gradient = gradient
    network, step_batch = run.network, step_on_text(run)
    backbone_inputs, classifier_inputs = [], []
    network.backbone.register_forward_hook(lambda m, args, out: backbone_inputs.append(args[0]))
    network.classifier.register_forward_hook(lambda m, args, out: classifier_inputs.append(args[0]))
    output = run.algorithm.training_step(StepContext(
        network, 1, torch.Generator().manual_seed(0),
        host_generator=torch.Generator().manual_seed(0)), step_batch)

    views = step_batch.labeled.views + step_batch.unlabeled.views
    assert len(backbone_inputs) == len(views)   # one pass per view, none of mixed ids
    assert all(any(x is view for view in views) for x in backbone_inputs)
    mixed = classifier_inputs[len(views):]      # the classifier alone on the mixed features
    assert [len(chunk) for chunk in mixed] == [4] * len(views)
    assert all(chunk.shape[1] == network.num_features for chunk in mixed)
    output.loss.backward()
    embeddings = network.backbone.bert.embeddings.word_embeddings.weight.grad
    assert (embeddings is not None and bool(embeddings.abs().sum() > 0)) == trains_bert
    assert network.classifier[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_vat_on_text_perturbs_berts_input_embeddings_by_eps_per_sample(ag_news, tiny_bert,
                                                                      precision):
    """semilearn's vat_embed: e + eps * d_adv goes back in as inputs_embeds with the mask. (The
    embedding layer's dropout is off here, so that e can be computed again outside the step.)"""
    from semisup.algorithms import StepContext
    from semisup.data.inputs import EmbeddedTokens

    run = text_trainer("vat", ag_news, tiny_bert)
    run.algorithm.precision = precision
    network, step_batch = run.network, step_on_text(run)
    network.backbone.bert.embeddings.dropout = torch.nn.Identity()
    (tokens,) = step_batch.unlabeled.views
    perturbed = []
    network.backbone.register_forward_hook(
        lambda m, args, out: perturbed.append(args[0]) if isinstance(args[0], EmbeddedTokens) else None)
    output = run.algorithm.training_step(StepContext(network, 1, torch.Generator().manual_seed(0)),
                                         step_batch)
    clean = network(tokens, want=("input_embeddings",)).heads["input_embeddings"]
    probe, adversarial = perturbed[-2:]                  # the power iteration's, then the LDS pass
    assert all(x.mask is tokens.mask for x in (probe, adversarial))
    assert adversarial.embeddings.shape == clean.shape == (4, tokens.ids.shape[1], 16)
    move = (adversarial.embeddings - clean).flatten(1).norm(dim=1)
    assert torch.allclose(move, torch.full((4,), run.algorithm.eps), rtol=1e-4)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert network.backbone.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("algorithm_name", ["remixmatch", "vat"])
def test_a_mixup_or_vat_text_run_resumes_bit_for_bit(algorithm_name, ag_news, tiny_bert, tmp_path):
    """MixUp's draws, VAT's noise (host and step generators) and dropout resume."""
    import json

    def die_at_3(step, metrics):
        if step >= 3:
            raise Killed(step)

    whole = text_trainer(algorithm_name, ag_news, tiny_bert, steps=4).fit()
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        text_trainer(algorithm_name, ag_news, tiny_bert, steps=4, checkpoint_path=checkpoint,
                     log=die_at_3).fit()
    torch.manual_seed(123)
    resumed = text_trainer(algorithm_name, ag_news, tiny_bert, steps=4,
                           checkpoint_path=checkpoint).fit()
    assert resumed.resumed_from == 2
    for field in ("metrics", "curve", "stat_history"):
        assert json.dumps(getattr(whole, field), sort_keys=True) == json.dumps(
            getattr(resumed, field), sort_keys=True), field


def test_tokenised_in_chunks_as_in_one_call(ag_news, tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert))
    texts = [original for original, _, _ in ag_news.train_texts]
    whole, chunked = tokenize(texts, tokenizer, 64), tokenize(texts, tokenizer, 64, chunk_size=7)
    assert torch.equal(whole.flat, chunked.flat) and torch.equal(whole.lengths, chunked.lengths)
    assert whole.flat.dtype == torch.int32 and len(whole) == 96


class Killed(Exception):
    """Stands in for SIGKILL: raised from the log callback after the step-2 checkpoint."""


def test_a_text_run_killed_and_resumed_ends_bit_for_bit_as_an_uninterrupted_one(ag_news, tiny_bert,
                                                                                 tmp_path):
    """Dropout (torch's generator) and the strong views' draws (the augment stream) resume."""
    import json

    def die_at_3(step, metrics):
        if step >= 3:
            raise Killed(step)

    whole = text_trainer("comatch", ag_news, tiny_bert, steps=4).fit()
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        text_trainer("comatch", ag_news, tiny_bert, steps=4, checkpoint_path=checkpoint,
                     log=die_at_3).fit()
    torch.manual_seed(123)   # a new process: another global generator state until resumed
    resumed = text_trainer("comatch", ag_news, tiny_bert, steps=4, checkpoint_path=checkpoint).fit()
    assert resumed.resumed_from == 2
    for field in ("metrics", "curve", "stat_history"):
        assert json.dumps(getattr(whole, field), sort_keys=True) == json.dumps(
            getattr(resumed, field), sort_keys=True), field


def test_tokens_are_cached_once_and_read_back_identical(ag_news, tiny_bert, tmp_path):
    from semisup.data.text import tokenizer_fingerprint

    tokenizer = load_tokenizer(str(tiny_bert))
    cache = tmp_path / "tokens" / f"{tokenizer_fingerprint(tokenizer)[:16]}-32.pt"
    made = TokenizedText.cached(ag_news, tokenizer, 32, cache)
    assert cache.exists()
    read = TokenizedText.cached(ag_news, None, 32, cache)   # no tokenizer needed: read back
    for pool in TokenizedText.POOL_NAMES:
        assert torch.equal(getattr(made, pool).flat, getattr(read, pool).flat)
        assert torch.equal(getattr(made, pool).starts, getattr(read, pool).starts)
    cache.write_bytes(b"not a cache")
    again = TokenizedText.cached(ag_news, tokenizer, 32, cache)   # made again, not an error
    assert torch.equal(again.test.flat, made.test.flat)
    from transformers import BertTokenizerFast

    other = BertTokenizerFast({**tokenizer.get_vocab(), "newword": len(tokenizer.get_vocab())})
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(load_tokenizer(str(tiny_bert))) == tokenizer_fingerprint(tokenizer)
