"""CTAugment: every op equals FixMatch-TF's PIL op at the same level on small hand-made images;
bins are drawn by weight above the threshold, probes at uniform levels; the rate update is the
reference's loop; the state round-trips."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from semisup.data import ctaugment, ctaugment_ops
from semisup.data.ctaugment import CTAugment, CTAugmentSettings, CTAPolicy

SETTINGS = CTAugmentSettings(depth=2, threshold=0.8, decay=0.99, probe_network="ema",
                             translate="pixels")
# One level per sample, inside every quarter of [0, 1), bin edges of 17 bins included.
LEVELS = torch.tensor([0.0, 0.03, 1 / 17, 0.2, 0.37, 0.5, 0.61, 0.74, 0.88, 16 / 17, 0.97, 0.9999],
                      dtype=torch.float64)


def random_images(n=12, channels=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


def hand_made_images(channels=3, size=12):
    """Edges, a flat patch, a narrow range and noise: the cases the filters and histograms see."""
    images = random_images(len(LEVELS), channels, size, seed=1)
    images[0] = 7                                      # flat
    images[1, :, :, : size // 2] = 0                   # a vertical edge
    images[1, :, :, size // 2:] = 255
    images[2] = images[2] // 16 + 100                  # a narrow range
    images[3, :, size // 3:] = 255                     # one dominant level
    return images


def to_pil(image):
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def from_pil(pil_image):
    array = np.asarray(pil_image)
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)


def pil_reference(images, pil_op, *arguments):
    """pil_op(image, *per-sample Python floats) for each image, as FixMatch-TF calls it."""
    columns = [argument.tolist() for argument in arguments]
    return torch.stack([from_pil(pil_op(to_pil(image), *values))
                        for image, *values in zip(images, *columns, strict=True)])


def cta_op(name):
    return {op.name: op for op in ctaugment_ops.make_ops(SETTINGS.translate)}[name]


def run_op(name, images, levels, second_levels=None, centres=None):
    second = torch.zeros_like(levels) if second_levels is None else second_levels
    centres = torch.zeros(len(images), 2, dtype=torch.float64) if centres is None else centres
    return cta_op(name).apply(images, torch.stack([levels, second], 1), centres)


# --- FixMatch-TF's ops (libml/ctaugment.py), written here as it writes them, with PIL ---------

def blend_with(op):
    return lambda x, level: Image.blend(x, op(x), level)


def enhance_with(enhancer):
    return lambda x, level: enhancer(x).enhance(0.1 + 1.9 * level)


PIL_OPS = {
    "autocontrast": blend_with(ImageOps.autocontrast),
    "blur": blend_with(lambda x: x.filter(ImageFilter.BLUR)),
    "brightness": enhance_with(ImageEnhance.Brightness),
    "color": enhance_with(ImageEnhance.Color),
    "contrast": enhance_with(ImageEnhance.Contrast),
    "equalize": blend_with(ImageOps.equalize),
    "invert": blend_with(ImageOps.invert),
    "posterize": lambda x, level: ImageOps.posterize(x, 1 + int(level * 7.999)),
    "rotate": lambda x, angle: x.rotate(int(np.round((2 * angle - 1) * 45))),
    "sharpness": enhance_with(ImageEnhance.Sharpness),
    "shear_x": lambda x, shear: x.transform(x.size, Image.Transform.AFFINE,
                                            (1, (2 * shear - 1) * 0.3, 0, 0, 1, 0)),
    "shear_y": lambda x, shear: x.transform(x.size, Image.Transform.AFFINE,
                                            (1, 0, 0, (2 * shear - 1) * 0.3, 1, 0)),
    "smooth": blend_with(lambda x: x.filter(ImageFilter.SMOOTH)),
    "solarize": lambda x, th: ImageOps.solarize(x, int(th * 255.999)),
    "translate_x": lambda x, delta: x.transform(x.size, Image.Transform.AFFINE,
                                                (1, 0, (2 * delta - 1) * 0.3, 0, 1, 0)),
    "translate_y": lambda x, delta: x.transform(x.size, Image.Transform.AFFINE,
                                                (1, 0, 0, 0, 1, (2 * delta - 1) * 0.3)),
}
@pytest.mark.parametrize("name", sorted(PIL_OPS))
@pytest.mark.parametrize("channels, size", [(3, 12), (1, 12), (3, 32), (1, 8)])
def test_each_op_equals_fixmatch_tf_pil_op_at_the_same_level(name, channels, size):
    images = hand_made_images(channels, size)
    expected = pil_reference(images, PIL_OPS[name], LEVELS)
    assert torch.equal(run_op(name, images, LEVELS), expected)


def test_rotate_and_shear_equal_pil_at_every_whole_angle_and_many_shears():
    """Pillow's affine runs in 16.16 fixed point; so do these (45 degrees puts source points on
    pixel edges, where a float formula would differ)."""
    images = hand_made_images(3, 32).repeat(8, 1, 1, 1)[:91]
    angles = (torch.arange(-45, 46, dtype=torch.float64) / 45 + 1) / 2
    assert torch.equal(run_op("rotate", images, angles), pil_reference(images, PIL_OPS["rotate"], angles))
    shears = torch.rand(91, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("shear_x", "shear_y"):
        assert torch.equal(run_op(name, images, shears), pil_reference(images, PIL_OPS[name], shears))


def pil_rescale(x, scale, method):
    """FixMatch-TF's rescale with Image.ANTIALIAS (removed in Pillow 10) as its alias LANCZOS."""
    size = x.size
    scale *= 0.25
    crop = (scale * size[0], scale * size[1], size[0] * (1 - scale), size[1] * (1 - scale))
    methods = (Image.Resampling.LANCZOS, Image.Resampling.BICUBIC, Image.Resampling.BILINEAR,
               Image.Resampling.BOX, Image.Resampling.HAMMING, Image.Resampling.NEAREST)
    return x.crop(crop).resize(x.size, methods[int(method * 5.99)])


@pytest.mark.parametrize("channels, size", [(3, 12), (1, 8), (3, 32), (3, 96)])
@pytest.mark.parametrize("method", range(6))
def test_rescale_equals_pil_crop_and_resize_with_each_of_the_six_filters(channels, size, method):
    images = hand_made_images(channels, size)
    methods = torch.full_like(LEVELS, (method + 0.5) / 6)
    expected = pil_reference(images, pil_rescale, LEVELS, methods)
    assert torch.equal(run_op("rescale", images, LEVELS, methods), expected)


def pil_cutout(x, level, row, column):
    """FixMatch-TF's cutout with its random centre given (column = its `height_loc`)."""
    size = 1 + int(level * min(x.size) * 0.499)
    width, height = x.size
    x = x.copy()   # Image.fromarray of a tensor's array is read-only
    pixels = x.load()
    for i in range(max(0, column - size // 2), min(width, column + size // 2)):
        for j in range(max(0, row - size // 2), min(height, row + size // 2)):
            pixels[i, j] = (127, 127, 127) if x.mode == "RGB" else 127
    return x


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 12)])
def test_cutout_equals_fixmatch_tf_gray_127_square_about_a_uniform_pixel(channels, size):
    images = hand_made_images(channels, size)
    centres = torch.rand(len(images), 2, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    rows, columns = (centres * size).floor().long().unbind(1)
    expected = pil_reference(images, pil_cutout, LEVELS, rows, columns)
    assert torch.equal(run_op("cutout", images, LEVELS, centres=centres), expected)


def test_cutout_at_level_one_is_16_px_at_32_px_and_always_comes_last():
    images = torch.zeros(200, 3, 32, 32, dtype=torch.uint8)
    augmenter = CTAugment(SETTINGS)
    augmenter.ops = tuple(op if op.name == "identity" else
                          ctaugment_ops._CTAOp(op.name, op.bins, None) for op in augmenter.ops)
    out = augmenter.augment(images, torch.Generator().manual_seed(0))   # ops: identity only
    cut = (out == 127).all(1)
    assert ((out == 0).all(1) | cut).all()
    heights, widths = cut.any(2).sum(1), cut.any(1).sum(1)
    assert heights.max() == 16 and widths.max() == 16 and (heights > 0).all()


def test_translate_in_pixels_is_the_identity_as_in_fixmatch_tf_and_width_moves_the_image():
    images = random_images()
    assert torch.equal(run_op("translate_x", images, LEVELS), images)
    assert torch.equal(run_op("translate_y", images, LEVELS), images)
    by_width = {op.name: op for op in ctaugment_ops.make_ops("width")}["translate_x"]
    levels = torch.tensor([[1 / 6, 0.0]], dtype=torch.float64)      # -0.2 of the width: 6.4 px
    white = torch.full((1, 1, 32, 32), 255, dtype=torch.uint8)
    moved = by_width.apply(white, levels, torch.zeros(1, 2, dtype=torch.float64))
    assert (moved[..., :, :6] == 0).all() and (moved[..., :, 7:] == 255).all()


def test_op_list_and_bins_are_fixmatch_tf_s():
    ops = ctaugment_ops.make_ops("pixels")
    assert ctaugment.OP_NAMES == (
        "autocontrast", "blur", "brightness", "color", "contrast", "cutout", "equalize", "invert",
        "identity", "posterize", "rescale", "rotate", "sharpness", "shear_x", "shear_y", "smooth",
        "solarize", "translate_x", "translate_y")
    bins = {op.name: op.bins for op in ops}
    assert bins["identity"] == () and bins["posterize"] == (8,) and bins["rescale"] == (17, 6)
    assert all(b == (17,) for name, b in bins.items()
               if name not in ("identity", "posterize", "rescale"))
    assert CTAugment(SETTINGS).num_bins == 16 * 17 + 8 + 17 + 6


def test_grouped_and_sync_free_op_application_agree():
    augmenter = CTAugment(SETTINGS)
    generator = torch.Generator().manual_seed(3)
    images = random_images(64, size=16, seed=3)
    policy = augmenter.policy(64, generator, probe=True)
    grouped = augmenter.apply(images.clone(), policy, grouped=True)
    selected = augmenter.apply(images.clone(), policy, grouped=False)
    assert torch.equal(grouped, selected)


# --- policies and the rate update --------------------------------------------------------------

def test_training_bins_are_drawn_by_weight_and_never_below_the_threshold():
    augmenter = CTAugment(SETTINGS)
    brightness = ctaugment.OP_NAMES.index("brightness")
    offset = int(augmenter.bin_offsets[brightness, 0])
    rates = augmenter.rates.clone()
    rates[offset:offset + 17] = 0.0             # weight 0.01 / 1.01: below 0.8, never drawn
    rates[offset + 3] = 1.0                     # weight 1
    rates[offset + 9] = 0.5                     # weight 0.51 / 1.01: below 0.8 too
    rates[offset + 12] = 0.85                   # weight 0.86 / 1.01 = 0.85: drawn
    augmenter.rates = rates
    policy = augmenter.policy(20000, torch.Generator().manual_seed(0), probe=False)
    chosen = policy.ops == brightness
    bins = policy.bins[..., 0][chosen] - offset
    assert set(bins.tolist()) == {3, 12}
    share = (bins == 12).float().mean().item()
    assert abs(share - 0.86 / 1.86) < 0.03
    levels = policy.levels[..., 0][chosen]
    assert ((levels * 17).floor() == bins).all()             # a level inside its bin


def test_probe_levels_are_uniform_and_bins_follow_int_level_times_bins_times_0_999():
    augmenter = CTAugment(SETTINGS)
    policy = augmenter.policy(4000, torch.Generator().manual_seed(1), probe=True)
    counts = augmenter.bin_counts[policy.ops]
    used = counts > 0
    expected_bins = augmenter.bin_offsets[policy.ops] + (policy.levels * counts * 0.999).floor().long()
    assert torch.equal(policy.bins[used], expected_bins[used]) and (policy.bins[~used] == -1).all()
    assert 0.45 < policy.levels[used].mean() < 0.55
    assert len(set(policy.ops.flatten().tolist())) == 19


def reference_update(rates, policy, probabilities, labels, decay):
    """FixMatch-TF's train_step loop and update_rates, sample by sample, op by op."""
    rates = rates.clone()
    for sample in range(len(labels)):
        error = probabilities[sample].double().clone()
        error[labels[sample]] -= 1
        proximity = 1 - 0.5 * error.abs().sum()
        for turn in range(policy.ops.shape[1]):
            for index in policy.bins[sample, turn].tolist():
                if index >= 0:
                    rates[index] = rates[index] * decay + proximity * (1 - decay)
    return rates


def test_rate_update_equals_the_reference_loop_with_repeated_bins():
    augmenter = CTAugment(SETTINGS)
    generator = torch.Generator().manual_seed(0)
    augmenter.rates = torch.rand(augmenter.num_bins, generator=generator, dtype=torch.float64)
    ops = torch.tensor([[9, 9], [9, 10], [8, 9], [10, 10]])      # posterize twice, rescale, identity
    levels = torch.tensor([[[0.5, 0.0], [0.55, 0.0]], [[0.5, 0.0], [0.3, 0.9]],
                           [[0.1, 0.2], [0.51, 0.0]], [[0.3, 0.9], [0.31, 0.1]]],
                          dtype=torch.float64)
    counts = augmenter.bin_counts[ops]
    bins = torch.where(counts > 0, augmenter.bin_offsets[ops]
                       + (levels * counts * 0.999).floor().long(), -1)
    policy = CTAPolicy(ops, levels, bins, torch.zeros(4, 2, 2, dtype=torch.float64))
    probabilities = torch.softmax(torch.randn(4, 10, generator=generator), 1)
    labels = torch.tensor([3, 0, 9, 3])
    expected = reference_update(augmenter.rates, policy, probabilities, labels, 0.99)
    augmenter.update(policy, probabilities, labels)
    assert torch.allclose(augmenter.rates, expected, rtol=0, atol=1e-15)
    assert (augmenter.rates != expected).sum() <= 4        # only bins updated several times


def test_a_perfect_prediction_keeps_rates_at_one_and_a_wrong_one_lowers_them():
    augmenter = CTAugment(SETTINGS)
    policy = augmenter.policy(8, torch.Generator().manual_seed(0), probe=True)
    labels = torch.arange(8) % 3
    augmenter.update(policy, torch.nn.functional.one_hot(labels, 3).float(), labels)
    assert torch.equal(augmenter.rates, torch.ones(augmenter.num_bins, dtype=torch.float64))
    augmenter.update(policy, torch.nn.functional.one_hot((labels + 1) % 3, 3).float(), labels)
    touched = torch.zeros(augmenter.num_bins, dtype=torch.bool)
    touched[policy.bins[policy.bins >= 0]] = True
    assert (augmenter.rates[touched] < 1).all() and (augmenter.rates[~touched] == 1).all()


def test_a_bin_whose_probes_are_always_misclassified_drops_below_the_threshold_and_out():
    """The control loop: each wrong probe (proximity 0) through invert's strongest bin multiplies
    its rate by 0.99. After 22, weight (0.99^22 + 0.01) / 1.01 = 0.804: still drawn; after 23,
    0.796 < 0.8: training never draws it again, nor any level in it."""
    augmenter = CTAugment(SETTINGS)
    invert = ctaugment.OP_NAMES.index("invert")
    strongest = int(augmenter.bin_offsets[invert, 0]) + 16
    ops = torch.full((1, 2), ctaugment.OP_NAMES.index("identity"))
    ops[0, 0] = invert
    bins = torch.full((1, 2, 2), -1)
    bins[0, 0, 0] = strongest
    policy = CTAPolicy(ops, torch.zeros(1, 2, 2, dtype=torch.float64), bins,
                       torch.zeros(1, 2, 2, dtype=torch.float64))
    wrong = torch.tensor([[0.0, 1.0]])
    for _ in range(22):
        augmenter.update(policy, wrong, torch.tensor([0]))
    drawn = augmenter.policy(4000, torch.Generator().manual_seed(0), probe=False)
    assert (drawn.bins == strongest).any()
    augmenter.update(policy, wrong, torch.tensor([0]))
    drawn = augmenter.policy(4000, torch.Generator().manual_seed(0), probe=False)
    assert not (drawn.bins == strongest).any()
    assert (drawn.levels[..., 0][drawn.ops == invert] < 16 / 17).all()


def test_state_round_trips_and_a_wrong_size_is_refused():
    augmenter = CTAugment(SETTINGS)
    augmenter.rates = torch.linspace(0, 1, augmenter.num_bins, dtype=torch.float64)
    other = CTAugment(SETTINGS)
    other.load_state_dict(augmenter.state_dict())
    assert torch.equal(other.rates, augmenter.rates)
    with pytest.raises(ValueError, match="bin rates"):
        other.load_state_dict({"rates": torch.ones(3)})


def test_same_generator_state_same_views():
    augmenter = CTAugment(SETTINGS)
    images = random_images(16)
    first = augmenter.augment(images, torch.Generator().manual_seed(5))
    again = augmenter.augment(images, torch.Generator().manual_seed(5))
    other = augmenter.augment(images, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.dtype == torch.uint8 and first.shape == images.shape


def test_unknown_settings_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="'ema', 'raw'"):
        CTAugmentSettings(2, 0.8, 0.99, probe_network="student", translate="pixels")
    with pytest.raises(ValueError, match="'pixels', 'width'"):
        CTAugmentSettings(2, 0.8, 0.99, probe_network="ema", translate="fraction")


# --- in the training loop: fixmatch + ctaugment on digits (tests/conftest.py) -------------------

def ctaugment_trainer(digits, make_algorithm=None, steps=6, **ctaugment_settings):
    from dataclasses import replace

    from semisup.algorithms import build_algorithm
    from semisup.data.image import image_train_data
    from semisup.data.splits import make_split
    from semisup.models import build_network
    from semisup.train import Trainer

    from pipeline.config import default_params, default_train_options
    from pipeline.runs.train import image_augment, train_config

    spec, data = digits
    options = default_train_options("digits", steps=steps, batch_size=8, uratio=2, eval_every=steps,
                                    log_every=2, checkpoint_every=steps, last_k=1,
                                    strong_augment="ctaugment")
    options["ctaugment"] = {**options["ctaugment"], **ctaugment_settings}
    split = make_split(data.train_labels.numpy(), 20, 10, 0, "digits")
    train_data = image_train_data(
        replace(data, test_images=data.test_images[:32], test_labels=data.test_labels[:32]),
        torch.tensor(split["labeled_indices"]), spec.inputs, image_augment(options), False,
        torch.device("cpu"))
    torch.manual_seed(0)
    network = build_network("small_cnn", 10, spec.inputs, width=4, bn_momentum=0.01)
    config = train_config(options)
    facts = train_data.facts(10)
    if make_algorithm is None:
        algorithm = build_algorithm("fixmatch", {**default_params()["algorithms"]["fixmatch"],
                                                 "tau": 0.5}, facts=facts, total_steps=steps)
    else:
        algorithm = make_algorithm(facts=facts, total_steps=steps)
    return Trainer(network, algorithm, train_data, config, 0, torch.device("cpu"))


def test_a_short_fixmatch_fit_with_ctaugment_learns_bin_rates_from_probes(digits):
    trainer = ctaugment_trainer(digits)
    augmenter = trainer.data.modality.ctaugment
    result = trainer.fit()
    assert all(np.isfinite(point["ema/error"]) for point in result.curve)
    assert (augmenter.rates < 1).any() and (augmenter.rates <= 1).all()
    # 6 steps x 8 probes x 2 ops: at most 96 updated bins (fewer: repeats and identity)
    assert 0 < (augmenter.rates < 1).sum() <= 96
    proximities = [row["train/ctaugment_probe_proximity"] for row in result.stat_history]
    assert all(0 <= value <= 1 for value in proximities)
    assert trainer.state_dict()["augmentation"]["ctaugment"]["rates"].equal(augmenter.rates)


def test_probe_network_raw_scores_probes_with_the_student(digits):
    ema = ctaugment_trainer(digits, steps=3)
    raw = ctaugment_trainer(digits, steps=3, probe_network="raw")
    ema.fit()
    raw.fit()
    # the same probes (same draws), scored by other networks after the first step
    assert not torch.equal(ema.data.modality.ctaugment.rates, raw.data.modality.ctaugment.rates)


def test_an_algorithm_that_wants_the_probe_reads_it_from_the_batch(digits):
    from semisup.algorithms.fixmatch import FixMatch

    seen = []

    class ProbeReader(FixMatch):
        def training_step(self, ctx, batch):
            seen.append(batch.probe)
            return super().training_step(ctx, batch)

    trainer = ctaugment_trainer(digits, steps=2,
                                make_algorithm=lambda **base: ProbeReader(tau=0.5, lambda_u=1.0,
                                                                          **base))
    trainer.fit()
    assert len(seen) == 2 and all(probe is not None for probe in seen)
    probe = seen[0]
    assert probe.inputs.shape == (8, 1, 8, 8) and probe.inputs.dtype == torch.float32
    assert probe.labels.shape == (8,) and probe.network == "ema"
    assert probe.policy.ops.shape == (8, 2)


def test_algorithms_without_a_strong_view_get_no_probe_and_draw_nothing_more(digits):
    from semisup.algorithms.supervised import Supervised

    trainer = ctaugment_trainer(digits, steps=2, make_algorithm=lambda **base: Supervised(**base))
    trainer.fit()
    assert torch.equal(trainer.data.modality.ctaugment.rates,
                       torch.ones_like(trainer.data.modality.ctaugment.rates))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ops_on_cuda_equal_ops_on_cpu():
    """Integer, fixed-point and exactly rounded float arithmetic: the same pixels on both (the
    tolerance is tests/test_augment.py's, until a GPU run has shown them exact)."""
    images = torch.cat([hand_made_images(3, 32), random_images()])
    levels = torch.rand(len(images), 2, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    centres = torch.rand(len(images), 2, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    for op in ctaugment_ops.make_ops("pixels"):
        if op.apply is not None:
            on_cpu = op.apply(images, levels, centres)
            on_cuda = op.apply(images.cuda(), levels.cuda(), centres.cuda()).cpu()
            assert (on_cpu != on_cuda).float().mean() <= 0.002, op.name
    augmenter = CTAugment(SETTINGS, "cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    probes, policy = augmenter.probe(images.cuda(), generator)
    augmenter.update(policy, torch.softmax(torch.randn(len(images), 10, device="cuda"), 1),
                     torch.arange(len(images), device="cuda") % 10)
    assert probes.is_cuda and augmenter.augment(images.cuda(), generator).is_cuda
    assert (augmenter.rates < 1).any()
