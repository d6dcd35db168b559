"""The audio data layer (semisup.data.audio, wave_augment, wav, audio_folder) on hand-made
waveforms: semilearn's random window, the strong effects one by one, the feature extractor's
normalisation and padding, views drawn from a seeded generator (and so resumable), WAV files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semisup.data import get_dataset
from semisup.data.audio import AudioAugment, AudioModality, Clips, padded, ragged, wave_batch
from semisup.data.inputs import WaveBatch, cat_inputs
from semisup.data.registry import DatasetError
from semisup.data.wav import read_wav, wav_bytes
from semisup.data.wave_augment import (StrongAudio, apply_effect, freeverb_impulse, gain_to_peak,
                                       pitch_shift, random_crop, reverb, speed_change,
                                       strong_effects)

RATE = 100   # samples per second: clips of a few hundred samples


def ramps(*lengths: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips whose sample i is i + 1 (so a window shows where it starts)."""
    return padded([torch.arange(1, n + 1, dtype=torch.float32) for n in lengths])


def modality(waves, lengths, **augment) -> AudioModality:
    """The data layer on the padded clips `waves` (held end to end, as it holds them)."""
    clips = Clips(*ragged([row[:length] for row, length in zip(waves, lengths, strict=True)]))
    pools = {pool: clips for pool in ("train", "unlabeled", "test")}
    return AudioModality(pools, RATE, AudioAugment(max_length_seconds=0.1, **augment))


def test_random_crop_takes_a_window_of_a_long_clip_and_keeps_a_short_one_whole():
    waves, lengths = ramps(30, 6, 10)
    cropped, new_lengths = random_crop(waves, lengths, 10, torch.Generator().manual_seed(0))
    assert new_lengths.tolist() == [10, 6, 10]
    start = int(cropped[0, 0])
    assert cropped[0].tolist() == list(range(start, start + 10))
    assert cropped[1].tolist() == [1, 2, 3, 4, 5, 6, 0, 0, 0, 0]
    assert cropped[2].tolist() == list(range(1, 11))   # exactly L long: whole


def test_random_crop_offsets_are_those_of_randint_0_to_len_minus_L_minus_1():
    waves, lengths = ramps(13)
    generator = torch.Generator().manual_seed(1)
    starts = {int(random_crop(waves, lengths, 10, generator)[0][0, 0]) - 1 for _ in range(300)}
    assert starts == {0, 1, 2}   # never 3: random.randint(0, len - L - 1)


def test_gain_scales_the_peak_to_the_drawn_decibels_and_clips_at_one():
    waves = torch.tensor([[0.1, -0.2, 0.05], [0.5, -0.25, 0.0]])
    out, _ = gain_to_peak(waves, torch.tensor([3, 3]), torch.tensor([-6.0, 4.0], dtype=torch.float64))
    assert out[0].abs().max().item() == pytest.approx(10 ** (-6 / 20), rel=1e-6)
    assert out[0, 0] / out[0, 1] == pytest.approx(-0.5)
    assert out[1].tolist()[0] == 1.0   # 10^(4/20) = 1.58, clipped
    assert out[1, 1].item() == pytest.approx(-0.25 / 0.5 * 10 ** 0.2, rel=1e-6)


def test_speed_two_halves_the_clip_and_half_speed_doubles_it():
    waves, lengths = ramps(10, 10)
    out, new_lengths = speed_change(waves, lengths, torch.tensor([2.0, 0.5], dtype=torch.float64))
    assert new_lengths.tolist() == [5, 20]
    assert out[0, :5].tolist() == [1, 3, 5, 7, 9]
    assert out[1, :4].tolist() == [1.0, 1.5, 2.0, 2.5]   # linear interpolation


def test_pitch_keeps_the_length_and_zero_cents_is_the_identity():
    waves, lengths = ramps(50)
    same, same_lengths = pitch_shift(waves, lengths, torch.tensor([0.0], dtype=torch.float64))
    assert torch.equal(same, waves) and same_lengths.tolist() == [50]
    up, _ = pitch_shift(waves, lengths, torch.tensor([1200.0], dtype=torch.float64))
    assert up[0, :4].tolist() == [1, 3, 5, 7]   # an octave up reads every other sample


def test_reverb_is_the_freeverb_impulse_response_and_linear():
    response = torch.tensor(freeverb_impulse(16000, 0.5), dtype=torch.float32)
    impulse = torch.zeros(1, 8000)
    impulse[0, 0] = 1.0
    out, _ = reverb(impulse, torch.tensor([8000]), 16000, 0.5)
    assert torch.allclose(out[0], response[:8000], atol=1e-7)
    first = int(torch.nonzero(response).min())
    assert first == int(1116 * 16000 / 44100 + 0.5)   # the shortest comb's delay, wet only
    clip = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    both, _ = reverb(clip, torch.tensor([4000, 4000]), 16000, 0.5)
    summed, _ = reverb(clip[:1] + clip[1:], torch.tensor([4000]), 16000, 0.5)
    assert torch.allclose(both[0] + both[1], summed[0], atol=1e-6)


def test_after_a_reverb_the_next_effect_sees_both_of_its_channels_as_in_sox():
    settings, lengths = StrongAudio(reverb_seconds=0.5), torch.tensor([8000])
    impulse = torch.zeros(1, 1, 8000)   # (rows, channels, samples)
    impulse[0, 0, 0] = 1.0
    stereo, _ = apply_effect("reverb", impulse, lengths, {}, settings, 16000)
    assert stereo.shape == (1, 2, 8000)
    for channel, shortest_comb in ((0, 1116), (1, 1116 + 12)):   # sox: stereo depth 100 %
        response = torch.tensor(freeverb_impulse(16000, 0.5, channel), dtype=torch.float32)
        assert torch.allclose(stereo[0, channel], response, atol=1e-7)
        assert int(torch.nonzero(response).min()) == int(shortest_comb * 16000 / 44100 + 0.5)
    gained, _ = apply_effect("gain", stereo, lengths, {"gain": torch.tensor([-6.0])}, settings,
                             16000)
    peak = stereo.abs().max()   # `gain -n`: one peak over both channels
    assert torch.allclose(gained, stereo * 10 ** (-6 / 20) / peak, atol=1e-7)
    clip = torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    left_only = torch.cat([clip, torch.zeros_like(clip)], dim=1)
    pair, half = (apply_effect("reverb", waves, torch.tensor([4000]), {}, settings, 16000)[0]
                  for waves in (clip.expand(1, 2, 4000), left_only))
    mono, _ = apply_effect("reverb", clip, torch.tensor([4000]), {}, settings, 16000)
    assert torch.allclose(pair, mono, atol=1e-7)   # a mono clip is its own pair
    assert torch.allclose(half, mono / 2, atol=1e-7)   # the mean of the two channels
    sped, sped_lengths = apply_effect("speed", left_only, torch.tensor([4000]),
                                      {"speed": torch.tensor([2.0], dtype=torch.float64)},
                                      settings, 16000)
    assert sped_lengths.tolist() == [2000] and torch.equal(sped[0, 0], clip[0, 0, ::2])
    assert not sped[0, 1].any()   # each channel on its own


def test_strong_effects_are_drawn_from_the_generator_alone():
    waves, lengths = padded([torch.sin(torch.arange(n) * 0.3) * 0.5 for n in (400, 250, 300)])
    settings = StrongAudio(reverb_seconds=0.2)
    first = strong_effects(waves, lengths, settings, 1000, torch.Generator().manual_seed(5))
    again = strong_effects(waves, lengths, settings, 1000, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = strong_effects(waves, lengths, settings, 1000, torch.Generator().manual_seed(6))
    assert not torch.equal(first[0][:, :200], other[0][:, :200])
    none = strong_effects(waves, lengths, StrongAudio(effects_per_sample=0), 1000,
                          torch.Generator().manual_seed(5))
    assert torch.equal(none[0], waves)


def test_views_are_cut_padded_normalised_and_masked_as_semilearns_extractor():
    waves, lengths = ramps(30, 6)
    layer = modality(waves, lengths)   # L = 10 samples
    weak, strong = layer.views("train", torch.tensor([0, 1]), ("weak", "strong"),
                               torch.Generator().manual_seed(0))
    for view in (weak, strong):
        assert isinstance(view, WaveBatch) and view.waveform.shape == (2, 10)
    assert weak.mask.sum(dim=1).tolist() == [10, 6]
    # normalised over the padded width: the padding counts (the extractor returns no mask)
    assert weak.waveform.mean(dim=1).abs().max() < 1e-5
    assert weak.waveform.var(dim=1, unbiased=False).tolist() == pytest.approx([1, 1], abs=1e-4)
    raw = torch.tensor([1, 2, 3, 4, 5, 6, 0, 0, 0, 0.0])
    expected = (raw - raw.mean()) / torch.sqrt(raw.var(unbiased=False) + 1e-7)
    assert torch.allclose(weak.waveform[1], expected, atol=1e-6)


def test_normalising_over_the_real_samples_leaves_the_padding_at_zero():
    batch = wave_batch(*ramps(6), width=10, over="real")
    assert batch.waveform[0, 6:].tolist() == [0, 0, 0, 0]
    assert batch.waveform[0, :6].mean().abs() < 1e-6


def test_evaluation_takes_the_first_seconds_and_pad_to_longest_pads_to_the_batch():
    waves, lengths = ramps(30, 6)
    fixed = next(modality(waves, lengths).batches("test", 2))
    assert fixed.waveform.shape == (2, 10) and fixed.mask[0].sum() == 10
    assert torch.allclose(fixed.waveform[0], wave_batch(*ramps(10), 10, "padded").waveform[0])
    short = next(modality(waves[1:], lengths[1:], pad_to="longest").batches("test", 1))
    assert short.waveform.shape == (1, 6)


def test_views_of_a_restored_generator_are_identical():
    waves, lengths = padded([torch.sin(torch.arange(n) * 0.2) for n in (300, 120, 200, 90)])
    layer = modality(waves, lengths)
    generator = torch.Generator().manual_seed(3)
    layer.views("unlabeled", torch.tensor([0, 1]), ("weak", "strong"), generator)
    state = generator.get_state()
    later = layer.views("unlabeled", torch.tensor([2, 3, 0]), ("weak", "strong"), generator)
    generator.set_state(state)
    resumed = layer.views("unlabeled", torch.tensor([2, 3, 0]), ("weak", "strong"), generator)
    for a, b in zip(later, resumed, strict=True):
        assert torch.equal(a.waveform, b.waveform) and torch.equal(a.mask, b.mask)
    joined = cat_inputs(later)
    assert joined.waveform.shape == (6, 10)


def test_unknown_settings_are_refused_with_the_allowed_values():
    waves, lengths = ramps(10)
    with pytest.raises(ValueError, match=r"audio\.pad_to is 'shortest'; allowed: max_length, longest"):
        modality(waves, lengths, pad_to="shortest")


def test_wav_files_are_read_as_mono_float_at_the_asked_rate():
    tone = 0.5 * np.sin(2 * math.pi * 5 * np.arange(200) / 200)
    samples = read_wav(wav_bytes(tone, 200), 200, "test", "tone.wav")
    assert samples.dtype == np.float32 and np.abs(samples - tone).max() < 1e-4
    halved = read_wav(wav_bytes(tone, 200), 100, "test", "tone.wav")
    assert len(halved) == 100
    with pytest.raises(DatasetError, match=r"tone\.wav is not a PCM WAV file"):
        read_wav(b"RIFF....not a wav", 100, "test", "tone.wav")


def test_audio_folder_partitions_each_class_and_pads_the_clips(tmp_path):
    for label, frequency in (("low", 3), ("high", 20)):
        (tmp_path / "clips" / label).mkdir(parents=True)
        for number in range(5):
            tone = 0.3 * np.sin(2 * math.pi * frequency * np.arange(100 + 10 * number) / RATE)
            (tmp_path / "clips" / label / f"{number}.wav").write_bytes(wav_bytes(tone, RATE))
    spec = get_dataset("audio_folder")
    options = {"path": str(tmp_path / "clips"), "test_fraction": 0.4, "partition_seed": 0,
               "sample_rate": RATE}
    files = spec.download(tmp_path / "raw", **options)
    data = spec.load(tmp_path / "raw", **options)
    assert [f.name for f in files] == ["audio_folder_index.json"]
    assert data.class_names == ["high", "low"] and len(data.test_labels) == 4
    assert len(data.train_lengths) == 6 and len(data.train_samples) == int(data.train_lengths.sum())
    assert data.shapes()["train_waveforms"] == [6, len(data.train_samples)]


def test_a_pool_holds_its_clips_end_to_end_and_cuts_rows_from_any_offset():
    clips = Clips(*ragged([torch.arange(1.0, 6.0), torch.arange(10.0, 13.0)]))
    assert clips.starts.tolist() == [0, 5]
    rows = clips.rows(torch.tensor([1, 0]), torch.tensor([1, 2]), 4)
    assert rows.tolist() == [[11, 12, 0, 0], [3, 4, 5, 0]]


@pytest.mark.parametrize("padding", ["max_length", True])
def test_padding_and_normalisation_match_semilearns_feature_extractor(padding):
    """semilearn's collator: Wav2Vec2FeatureExtractor as facebook/wav2vec2-base-960h and
    hubert-base-ls960 configure it (do_normalize, no attention mask), called with truncation to
    max_length and padding "max_length" (strong views) or True (weak views, evaluation)."""
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    rng = np.random.default_rng(0)
    clips = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (3000, 1200, 3500, 5000)]
    theirs = extractor(clips, padding=padding, max_length=4000, truncation=True,
                       sampling_rate=16000, return_tensors="pt")["input_values"]
    waves, lengths = padded(clips)
    width = 4000 if padding == "max_length" else int(lengths.clamp(max=4000).max())
    ours = wave_batch(waves, lengths, width, "padded")
    assert ours.waveform.shape == theirs.shape
    assert torch.allclose(ours.waveform, theirs, atol=1e-5)
