"""Batched augmentation: every RandAugment op equals the PIL operation the reference codebases
call, and weak/strong augmentation draw per-sample choices reproducibly from the generator."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from semisup.data import augment
from semisup.data.augment import strong_augment, weak_augment

GRAY = 128


def random_images(n=8, channels=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


def special_images(channels=3):
    """Corner cases of the histogram ops: flat, two levels, narrow range, one dominant level."""
    flat = torch.full((channels, 32, 32), 7, dtype=torch.uint8)
    two_levels = torch.zeros(channels, 32, 32, dtype=torch.uint8)
    two_levels[:, :, 16:] = 200
    narrow = random_images(1, channels, seed=1)[0] // 16 + 100
    dominant = random_images(1, channels, seed=2)[0]
    dominant[:, 4:, :] = 255
    return torch.stack([flat, two_levels, narrow, dominant])


def to_pil(image):
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def from_pil(pil_image):
    array = np.asarray(pil_image)
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)


def pil_reference(images, pil_op, values=None):
    values = [None] * len(images) if values is None else values.tolist()
    return torch.stack([from_pil(pil_op(to_pil(image), value))
                        for image, value in zip(images, values, strict=True)])


def fill_for(image):
    return GRAY if image.mode == "L" else (GRAY,) * 3


FACTORS = torch.tensor([0.05, 0.14, 0.3, 0.5, 0.61, 0.77, 0.9, 0.95])


# --- colour ops: exact, because the arithmetic repeats PIL's (float32 blend, truncation) ---

@pytest.mark.parametrize("op, enhancer", [
    (augment._brightness, ImageEnhance.Brightness),
    (augment._color, ImageEnhance.Color),
    (augment._contrast, ImageEnhance.Contrast),
    (augment._sharpness, ImageEnhance.Sharpness),
])
@pytest.mark.parametrize("channels", [3, 1])
def test_enhance_ops_equal_pil_image_enhance_exactly(op, enhancer, channels):
    images = random_images(channels=channels)
    expected = pil_reference(images, lambda image, factor: enhancer(image).enhance(factor), FACTORS)
    assert torch.equal(op(images, FACTORS), expected)


def test_color_is_the_identity_on_one_channel_images():
    images = random_images(channels=1)
    assert torch.equal(augment._color(images, FACTORS), images)


def test_posterize_keeps_the_floor_of_bits_high_bits_as_pil():
    images = random_images()
    bits = torch.tensor([4.0, 4.7, 5.0, 5.5, 6.2, 7.0, 7.99, 8.0])
    expected = pil_reference(images, lambda image, b: ImageOps.posterize(image, int(b)), bits)
    assert torch.equal(augment._posterize(images, bits), expected)


def test_solarize_inverts_pixels_at_or_above_the_threshold_as_pil():
    images = random_images()
    thresholds = torch.tensor([0.0, 1.0, 50.5, 128.0, 200.0, 230.4, 255.0, 256.0])
    expected = pil_reference(images, ImageOps.solarize, thresholds)
    assert torch.equal(augment._solarize(images, thresholds), expected)


@pytest.mark.parametrize("op, pil_op", [
    (augment._auto_contrast, ImageOps.autocontrast),
    (augment._equalize, ImageOps.equalize),
])
@pytest.mark.parametrize("channels", [3, 1])
def test_histogram_ops_equal_pil_image_ops_exactly(op, pil_op, channels):
    images = torch.cat([random_images(4, channels), special_images(channels)])
    expected = pil_reference(images, lambda image, _: pil_op(image))
    assert torch.equal(op(images, torch.zeros(len(images))), expected)


# --- geometric ops: nearest resampling with gray fill, as Image.rotate / Image.transform ---

def test_translate_equals_pil_affine_transform_exactly():
    images = random_images()
    fractions = torch.tensor([-0.3, -0.21875, -0.1, 0.0, 0.03, 0.125, 0.2, 0.3])
    for op, coefficients in [
        (augment._translate_x, lambda shift: (1, 0, shift * 32, 0, 1, 0)),
        (augment._translate_y, lambda shift: (1, 0, 0, 0, 1, shift * 32)),
    ]:
        expected = pil_reference(images, lambda image, shift: image.transform(
            image.size, Image.Transform.AFFINE, coefficients(shift),  # noqa: B023 - used at once
            fillcolor=fill_for(image)),
            fractions)
        assert torch.equal(op(images, fractions), expected)


# PIL accumulates the source coordinates row by row and rounds sin/cos to 15 digits, we compute
# them directly: a source point that falls within ~1e-12 of a pixel boundary may land in the
# neighbouring pixel. Over 400 random rotations that is 60 pixels in 409,600 (0.015 %).
GEOMETRIC_TOLERANCE = 0.002   # fraction of pixels that may differ


@pytest.mark.parametrize("channels", [3, 1])
def test_rotate_and_shear_equal_pil_up_to_boundary_ties(channels):
    images = random_images(channels=channels)
    degrees = torch.tensor([-30.0, -17.3, -5.0, 0.0, 3.0, 12.5, 24.0, 30.0])
    shears = torch.tensor([-0.3, -0.22, -0.1, 0.0, 0.05, 0.13, 0.27, 0.3])
    cases = [
        (augment._rotate, degrees,
         lambda image, angle: image.rotate(angle, fillcolor=fill_for(image))),
        (augment._shear_x, shears, lambda image, shear: image.transform(
            image.size, Image.Transform.AFFINE, (1, shear, 0, 0, 1, 0), fillcolor=fill_for(image))),
        (augment._shear_y, shears, lambda image, shear: image.transform(
            image.size, Image.Transform.AFFINE, (1, 0, 0, shear, 1, 0), fillcolor=fill_for(image))),
    ]
    for op, values, pil_op in cases:
        differing = (op(images, values) != pil_reference(images, pil_op, values)).any(1)
        assert differing.float().mean() <= GEOMETRIC_TOLERANCE


def test_geometric_ops_fill_uncovered_pixels_with_gray_128():
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    moved = augment._translate_x(white, torch.tensor([0.25]))      # samples 8 px to the right
    assert (moved[..., :, 24:] == GRAY).all() and (moved[..., :, :24] == 255).all()


# --- magnitudes ---

def test_fixmatch_magnitudes_map_onto_the_op_ranges_as_kekmodel():
    ops = {op.name: op for op in augment._OPS}
    magnitudes = torch.arange(1, 11) / 10
    positive = torch.ones(10)
    m = torch.arange(1, 11)
    assert torch.equal(ops["Posterize"].value(magnitudes, positive).floor(), 4 + (4 * m) // 10)
    solarize = ops["Solarize"].value(magnitudes, positive)   # pixel >= t  <=>  pixel >= ceil(t)
    assert torch.equal(solarize.ceil(), 256 - (256 * m) // 10)
    assert torch.allclose(ops["Brightness"].value(magnitudes, positive), 0.05 + 0.09 * m)
    assert torch.allclose(ops["Rotate"].value(magnitudes, -positive), -3.0 * m)
    assert torch.allclose(ops["TranslateX"].value(magnitudes, positive), 0.03 * m)


# --- weak augmentation ---

def test_weak_augment_is_a_crop_of_the_reflect_padded_image_maybe_flipped():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    padded = np.pad(image[0, 0].numpy(), 1, mode="reflect")      # pad_fraction 0.25 of 4 px
    crops = {(top, left): padded[top:top + 4, left:left + 4] for top in range(3) for left in range(3)}
    batch = image.expand(300, 1, 4, 4)

    unflipped = weak_augment(batch, torch.Generator().manual_seed(0), flip=False,
                             pad_fraction=0.25)
    seen = {offset for out in unflipped for offset, crop in crops.items()
            if np.array_equal(out[0].numpy(), crop)}
    assert seen == set(crops)             # every offset 0..2 * pad occurs, and nothing else
    assert all(any(np.array_equal(out[0].numpy(), crop) for crop in crops.values())
               for out in unflipped)

    flipped = weak_augment(batch, torch.Generator().manual_seed(0), pad_fraction=0.25)
    is_flipped = [not any(np.array_equal(out[0].numpy(), crop) for crop in crops.values())
                  for out in flipped]
    assert all(any(np.array_equal(out[0].numpy(), crop[:, ::-1]) for crop in crops.values())
               for out, flip in zip(flipped, is_flipped, strict=True) if flip)
    assert 0.35 < np.mean(is_flipped) < 0.65


def test_weak_augment_without_padding_or_flip_is_the_identity():
    images = random_images()
    out = weak_augment(images, torch.Generator().manual_seed(0), flip=False, pad_fraction=0.0)
    assert torch.equal(out, images)


def test_weak_augment_pads_round_pad_fraction_times_width_pixels():
    ramp = torch.arange(32, dtype=torch.uint8).expand(200, 1, 32, 32)   # value = column
    out = weak_augment(ramp, torch.Generator().manual_seed(0), flip=False)
    shifts = out[:, 0, 0, 10].long() - 10        # column 10 never meets the reflected border
    assert set(shifts.tolist()) == set(range(-4, 5))


# --- cutout ---

def test_fixmatch_cutout_is_a_16_px_gray_127_square_clipped_to_the_image():
    black = torch.zeros(200, 3, 32, 32, dtype=torch.uint8)
    out = augment._cutout(black, torch.Generator().manual_seed(0), "fixmatch")
    cut = (out == 127).all(1)
    assert ((out == 0).all(1) | cut).all()                     # only the square changed
    rows, columns = cut.any(2), cut.any(1)
    heights, widths = rows.sum(1), columns.sum(1)
    assert torch.equal(cut.sum((1, 2)), heights * widths)      # a rectangle
    for extent, edges in [(heights, rows), (widths, columns)]:
        clipped = edges[:, 0] | edges[:, -1]
        assert (extent[~clipped] == 16).all() and (extent <= 16).all() and (extent > 0).all()
    assert (heights * widths == 256).float().mean() > 0.1


def test_usb_cutout_side_is_uniform_up_to_half_the_width_filled_with_usb_colour():
    black = torch.zeros(300, 3, 32, 32, dtype=torch.uint8)
    out = augment._cutout(black, torch.Generator().manual_seed(0), "usb")
    cut = (out != 0).any(1)
    assert (out.permute(0, 2, 3, 1)[cut] == torch.tensor([125, 123, 114], dtype=torch.uint8)).all()
    sides = torch.maximum(cut.any(2).sum(1), cut.any(1).sum(1))
    assert sides.max() == 16 and (sides == 0).any()
    assert 6 < sides.float().mean() < 10


# --- strong augmentation as a whole ---

@pytest.mark.parametrize("variant", augment.VARIANTS)
@pytest.mark.parametrize("channels, size", [(3, 32), (1, 32), (1, 8)])
def test_strong_augment_keeps_shape_and_dtype(variant, channels, size):
    images = random_images(channels=channels, size=size)
    out = strong_augment(images, torch.Generator().manual_seed(0), variant=variant)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert weak_augment(images, torch.Generator().manual_seed(0)).shape == images.shape


@pytest.mark.parametrize("variant", augment.VARIANTS)
def test_same_seed_same_output_different_seed_different_output(variant):
    images = random_images()
    first = strong_augment(images, torch.Generator().manual_seed(3), variant=variant)
    again = strong_augment(images, torch.Generator().manual_seed(3), variant=variant)
    other = strong_augment(images, torch.Generator().manual_seed(4), variant=variant)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_generator_state_resumes_the_same_stream():
    images = random_images()
    generator = torch.Generator().manual_seed(0)
    strong_augment(images, generator)
    saved_state = generator.get_state()
    expected = strong_augment(images, generator)
    generator.set_state(saved_state)
    assert torch.equal(strong_augment(images, generator), expected)


def test_strong_augment_does_not_modify_its_input():
    images = random_images()
    copy = images.clone()
    strong_augment(images, torch.Generator().manual_seed(0), variant="usb")
    assert torch.equal(images, copy)


def test_each_sample_draws_its_own_ops():
    one_image = random_images(1).expand(8, 3, 32, 32)
    out = augment._rand_augment(one_image, torch.Generator().manual_seed(0), "usb")
    assert len({tuple(sample.flatten().tolist()) for sample in out}) == 8


def test_fixmatch_applies_each_op_with_probability_half_usb_always():
    images = random_images(400)
    unchanged = {}
    for variant in augment.VARIANTS:
        out = augment._rand_augment(images, torch.Generator().manual_seed(0), variant)
        unchanged[variant] = (out == images).flatten(1).all(1).float().mean().item()
    # fixmatch: both ops skipped or Identity: (1/2 + 1/28)^2 = 0.29; usb: three Identity draws
    assert 0.22 < unchanged["fixmatch"] < 0.36
    assert unchanged["usb"] < 0.02


def test_unknown_variant_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="'fixmatch', 'usb'"):
        strong_augment(random_images(), torch.Generator(), variant="randaugment")


def test_non_uint8_images_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        weak_augment(random_images().float(), torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ops_on_cuda_equal_ops_on_cpu():
    images = torch.cat([random_images(), special_images()])
    values = torch.rand(len(images), generator=torch.Generator().manual_seed(0))
    for op in augment._OPS:
        op_values = op.value(values, torch.ones(len(images)))
        on_cpu = op.apply(images, op_values)
        on_cuda = op.apply(images.cuda(), op_values.cuda()).cpu()
        assert (on_cpu != on_cuda).float().mean() <= GEOMETRIC_TOLERANCE, op.name
    generator = torch.Generator(device="cuda").manual_seed(0)
    for variant in augment.VARIANTS:
        assert strong_augment(images.cuda(), generator, variant=variant).is_cuda


def test_sync_free_op_selection_equals_the_grouped_path():
    """The CUDA path (every op on the whole batch, select per sample) gives exactly the CPU
    path's result (ops sorted into blocks), so GPU runs need no host synchronisation."""
    from semisup.data.augment import _OPS, _apply_chosen_ops

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=generator)
    op_indices = torch.randint(0, len(_OPS) + 1, (64,), generator=generator)
    magnitudes = torch.rand(64, generator=generator)
    signs = torch.where(torch.rand(64, generator=generator) < 0.5, -1.0, 1.0)
    grouped = _apply_chosen_ops(images.clone(), op_indices, magnitudes, signs, grouped=True)
    selected = _apply_chosen_ops(images.clone(), op_indices, magnitudes, signs, grouped=False)
    assert torch.equal(grouped, selected)
