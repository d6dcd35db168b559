"""semilearn's per-dataset image augmentation, as parameters: vertical flips (EuroSAT,
TissueMNIST), RandAugment without the colour ops (TissueMNIST), and Semi-Aves' 224 px crops of
256 px images with a random resized crop for the strong view; checked on hand-made images, and
the defaults draw and return what the views did before these choices existed."""
import numpy as np
import pytest
import torch
from PIL import Image

from semisup.data import augment
from semisup.data.augment import OP_LISTS, strong_augment, weak_augment
from semisup.data.geometry import (centre_crop, resize_boxes, resized_crop, resized_crop_boxes)


def row_coded(n=64, size=8, channels=3):
    """Pixel (y, x) holds 16 y + x: every pixel says where it came from."""
    grid = 16 * torch.arange(size).view(size, 1) + torch.arange(size).view(1, size)
    return grid.to(torch.uint8).expand(n, channels, size, size).clone()


def random_images(n=8, channels=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


# --- vertical flips -------------------------------------------------------------------------------

def test_a_vertical_flip_reverses_the_rows_of_about_half_the_samples():
    images = row_coded(n=400)
    out = weak_augment(images, torch.Generator().manual_seed(0), flip=False, pad_fraction=0,
                       vertical_flip=True)
    flipped = torch.tensor([torch.equal(o, i.flip(1)) for o, i in zip(out, images, strict=True)])
    unchanged = torch.tensor([torch.equal(o, i) for o, i in zip(out, images, strict=True)])
    assert bool((flipped | unchanged).all())          # rows reversed or kept, columns never
    assert 160 < int(flipped.sum()) < 240


def test_both_flips_give_all_four_orientations():
    images = row_coded(n=200)
    out = weak_augment(images, torch.Generator().manual_seed(1), flip=True, pad_fraction=0,
                       vertical_flip=True)
    orientations = {(torch.equal(o, images[0].flip(1)), torch.equal(o, images[0].flip(2)),
                     torch.equal(o, images[0].flip(1, 2)), torch.equal(o, images[0])) for o in out}
    assert orientations == {(True, False, False, False), (False, True, False, False),
                            (False, False, True, False), (False, False, False, True)}


def test_without_a_vertical_flip_the_weak_view_draws_only_the_crop_and_the_horizontal_flip():
    """vertical_flip false (the default) leaves the generator where the views left it before."""
    images = random_images(16)
    generator = torch.Generator().manual_seed(3)
    weak_augment(images, generator, flip=True, pad_fraction=0.125)
    expected = torch.Generator().manual_seed(3)
    torch.randint(0, 9, (16, 1), generator=expected)
    torch.randint(0, 9, (16, 1), generator=expected)
    torch.rand((16, 1), generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())


def test_the_strong_view_is_the_weak_crop_and_flips_then_randaugment(monkeypatch):
    """With RandAugment and Cutout taken out, the strong view is the weak view, vertical flip
    included, drawn from the same generator state."""
    monkeypatch.setattr(augment, "_rand_augment", lambda images, *args: images)
    monkeypatch.setattr(augment, "_cutout", lambda images, *args: images)
    images = row_coded(n=64)
    strong = strong_augment(images, torch.Generator().manual_seed(0), variant="usb",
                            pad_fraction=0.25, vertical_flip=True)
    weak = weak_augment(images, torch.Generator().manual_seed(0), pad_fraction=0.25,
                        vertical_flip=True)
    assert torch.equal(strong, weak)


# --- RandAugment without colour ops ---------------------------------------------------------------

def test_no_color_is_semilearns_augment_list_no_color():
    names = [augment._OPS[index].name for index in OP_LISTS["no_color"]]
    assert names == ["Brightness", "Equalize", "Identity", "Rotate", "Sharpness", "ShearX",
                     "ShearY", "TranslateX", "TranslateY"]
    assert [augment._OPS[index].name for index in OP_LISTS["all"]] == [op.name for op in augment._OPS]


@pytest.mark.parametrize("variant", ["fixmatch", "usb"])
def test_the_no_color_list_never_draws_a_colour_op_and_draws_each_of_its_own(monkeypatch, variant):
    drawn = []
    apply = augment._apply_chosen_ops

    def recording(images, op_indices, *args, **kwargs):
        drawn.extend(op_indices.tolist())
        return apply(images, op_indices, *args, **kwargs)

    monkeypatch.setattr(augment, "_apply_chosen_ops", recording)
    strong_augment(random_images(256), torch.Generator().manual_seed(0), variant=variant,
                   ops="no_color")
    names = {augment._OPS[index].name for index in drawn if index < len(augment._OPS)}
    assert names == set(augment.NO_COLOR_OPS)
    assert not names & {"AutoContrast", "Color", "Contrast", "Posterize", "Solarize"}


def test_the_op_list_changes_which_ops_the_draws_mean_not_the_draws():
    images = random_images(32)
    generators = [torch.Generator().manual_seed(5) for _ in range(2)]
    strong_augment(images, generators[0], variant="usb", ops="all")
    strong_augment(images, generators[1], variant="usb", ops="no_color")
    assert torch.equal(generators[0].get_state(), generators[1].get_state())


def test_an_unknown_op_list_or_crop_is_named_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"ops 'gray'.*'all', 'no_color'"):
        strong_augment(random_images(2), torch.Generator(), ops="gray")
    with pytest.raises(ValueError, match=r"crop 'random'.*'pad_crop', 'resized_crop'"):
        strong_augment(random_images(2), torch.Generator(), crop="random")


# --- crops: Semi-Aves' 224 of 256 ----------------------------------------------------------------

def test_a_crop_size_takes_a_window_of_that_size_at_a_uniform_offset():
    images = row_coded(n=300, size=8)
    out = weak_augment(images, torch.Generator().manual_seed(0), flip=False, pad_fraction=0,
                       crop_size=5)
    assert out.shape == (300, 3, 5, 5)
    tops, lefts = out[:, 0, 0, 0] // 16, out[:, 0, 0, 0] % 16
    for sample, top, left in zip(out, tops, lefts, strict=True):
        assert torch.equal(sample, images[0, :, top:top + 5, left:left + 5])
    assert set(tops.tolist()) == set(lefts.tolist()) == {0, 1, 2, 3}   # 8 - 5 + 1 offsets


def test_a_crop_larger_than_the_images_is_refused_naming_the_sizes():
    with pytest.raises(ValueError, match="crop_size=40 is larger than the 32x32 images"):
        weak_augment(random_images(2), torch.Generator(), pad_fraction=0, crop_size=40)


def test_the_centre_crop_is_torchvisions():
    images = row_coded(n=2, size=8)
    assert torch.equal(centre_crop(images, 4), images[..., 2:6, 2:6])
    assert centre_crop(torch.zeros(1, 3, 256, 256, dtype=torch.uint8), 224).shape[-1] == 224
    with pytest.raises(ValueError, match="centre crop of 9 px"):
        centre_crop(images, 9)


# --- the random resized crop ----------------------------------------------------------------------

def test_resized_crop_boxes_fall_inside_the_image_within_the_scale_and_ratio_ranges():
    images = torch.zeros(2000, 3, 64, 64, dtype=torch.uint8)
    tops, lefts, heights, widths = resized_crop_boxes(
        images, torch.Generator().manual_seed(0), scale=(0.25, 0.5), ratio=(0.5, 2.0))
    assert bool((tops >= 0).all() and (lefts >= 0).all())
    assert bool((tops + heights <= 64).all() and (lefts + widths <= 64).all())
    areas = (heights * widths).double() / 64 ** 2
    aspect = widths.double() / heights
    # rounding each side to a pixel moves the area and ratio a little off the drawn values
    assert 0.25 - 0.03 < float(areas.min()) < 0.27 and 0.48 < float(areas.max()) < 0.5 + 0.03
    assert 0.5 - 0.05 < float(aspect.min()) < 0.55 and 1.8 < float(aspect.max()) < 2.0 + 0.1
    assert abs(float(torch.log(aspect).mean())) < 0.05          # log-uniform about 1


def test_a_box_that_never_fits_falls_back_to_the_whole_image_clipped_to_the_ratio():
    images = torch.zeros(4, 3, 10, 40, dtype=torch.uint8)      # 4:1, wider than any ratio drawn
    _, _, heights, widths = resized_crop_boxes(
        images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 2.0))
    assert heights.tolist() == [10] * 4 and widths.tolist() == [20] * 4   # height x max ratio


def test_resizing_boxes_enlarges_them_as_pil_bilinear():
    images = random_images(6, size=16)
    boxes = resized_crop_boxes(images, torch.Generator().manual_seed(2), scale=(0.1, 0.6),
                               ratio=(3 / 4, 4 / 3))
    out = resize_boxes(images, *boxes, size=24)
    for image, result, top, left, height, width in zip(images, out, *boxes, strict=True):
        box = (int(left), int(top), int(left + width), int(top + height))
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).crop(box).resize(
            (24, 24), Image.Resampling.BILINEAR)
        expected = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
        assert int((result.int() - expected.int()).abs().max()) <= 1   # PIL's fixed point


def test_a_whole_image_box_at_the_images_size_is_the_identity():
    images = random_images(4, size=12)
    full = torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    sides = torch.full((4,), 12), torch.full((4,), 12)
    assert torch.equal(resize_boxes(images, *full, *sides, size=12), images)


def test_a_strong_resized_crop_has_the_crop_size_and_flips_after_resizing():
    images = random_images(8, size=32)
    out = strong_augment(images, torch.Generator().manual_seed(0), variant="usb",
                         crop="resized_crop", crop_size=24)
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.uint8
    coded = row_coded(n=300, size=8)
    flipped = resized_crop(coded, torch.Generator().manual_seed(0), size=8, scale=(1.0, 1.0),
                           ratio=(1.0, 1.0), horizontal_flip=True, vertical_flip=True)
    seen = {next(name for name, view in (("same", coded[0]), ("h", coded[0].flip(2)),
                                         ("v", coded[0].flip(1)), ("hv", coded[0].flip(1, 2)))
                 if torch.equal(sample, view)) for sample in flipped}
    assert seen == {"same", "h", "v", "hv"}


# --- determinism ----------------------------------------------------------------------------------

USB_CHOICES = [dict(vertical_flip=True, ops="no_color"),
               dict(crop="resized_crop", crop_size=24, pad_fraction=0),
               dict(crop_size=24, pad_fraction=0, vertical_flip=True)]


@pytest.mark.parametrize("choices", USB_CHOICES)
def test_same_seed_same_batch_other_seed_other_batch(choices):
    images = random_images(16)
    first = strong_augment(images, torch.Generator().manual_seed(7), variant="usb", **choices)
    again = strong_augment(images, torch.Generator().manual_seed(7), variant="usb", **choices)
    other = strong_augment(images, torch.Generator().manual_seed(8), variant="usb", **choices)
    assert torch.equal(first, again) and not torch.equal(first, other)


# --- the image data layer -------------------------------------------------------------------------

def image_modality(**train):
    from semisup.catalog import DATASETS
    from semisup.data.image import ImageModality

    from pipeline.config import default_train_options
    from pipeline.runs.train import image_augment

    pools = {pool: random_images(4, size=10, seed=seed)
             for seed, pool in enumerate(("train", "unlabeled", "test"))}
    augment = image_augment(default_train_options("cifar10", **train))
    return ImageModality(pools, DATASETS["cifar10"].inputs, augment, channels_last=False)


def test_with_a_crop_size_training_sees_random_crops_and_evaluation_the_centre_crop():
    modality = image_modality(crop_size=6, pad_fraction=0, strong_crop="resized_crop",
                              strong_augment="usb")
    weak, strong = modality.views("unlabeled", torch.arange(4), ("weak", "strong"),
                                  torch.Generator().manual_seed(0))
    assert weak.shape == strong.shape == (4, 3, 6, 6)
    (evaluated,) = list(modality.batches("test", 16))
    assert torch.equal(evaluated, modality.normalize(modality.pools["test"][..., 2:8, 2:8]))


def test_without_a_crop_size_evaluation_sees_the_whole_images():
    modality = image_modality()
    (evaluated,) = list(modality.batches("test", 16))
    assert torch.equal(evaluated, modality.normalize(modality.pools["test"]))


def test_ctaugment_refuses_randaugments_op_list_and_crop_naming_both():
    with pytest.raises(ValueError, match="rand_augment_ops 'no_color' and strong_crop"):
        image_modality(strong_augment="ctaugment", rand_augment_ops="no_color")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("choices", USB_CHOICES)
def test_the_usb_choices_run_on_cuda_and_resize_boxes_as_on_the_cpu(choices):
    images = random_images(16)
    on_cuda = [strong_augment(images.cuda(), torch.Generator(device="cuda").manual_seed(7),
                              variant="usb", **choices) for _ in range(2)]
    assert on_cuda[0].is_cuda and torch.equal(on_cuda[0], on_cuda[1])
    boxes = resized_crop_boxes(images, torch.Generator().manual_seed(0), scale=(0.1, 1.0),
                               ratio=(3 / 4, 4 / 3))
    on_cpu = resize_boxes(images, *boxes, size=24)
    moved = resize_boxes(images.cuda(), *(box.cuda() for box in boxes), size=24).cpu()
    assert int((on_cpu.int() - moved.int()).abs().max()) <= 1
