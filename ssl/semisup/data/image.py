"""The image data layer: uint8 images (N, C, H, W) resident on the training device, augmented a
whole batch at a time there (semisup.data.augment) and normalised per channel.

View kinds: "weak" (random crop after reflect padding, horizontal flip where the dataset allows,
vertical flip where asked) and "strong" (weak, or a random resized crop and the flips, then
RandAugment over all ops or those without colour and Cutout in the chosen variant, or CTAugment
and its cutout: `strong` = "ctaugment"). With a crop_size smaller than the images, the training
views are crops of that size and evaluation sees the centre crop (semilearn's Semi-Aves: 224 px
of images loaded at 256). With CTAugment, a step whose views include "strong" also gets a
probe of its labeled samples (weak, then CTAugment's probe policy), whose predictions update the
bin rates (semisup.data.ctaugment).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..catalog import ImageInputs
from .augment import strong_augment, weak_augment
from .geometry import centre_crop
from .ctaugment import CTAugment, CTAugmentSettings
from .modality import POOLS, Modality, Probe, TrainData
from .registry import ImageData


@dataclass(frozen=True)
class ImageAugment:
    """How an image dataset is augmented (params.yaml: train.horizontal_flip, pad_fraction,
    strong_augment, ctaugment, vertical_flip, rand_augment_ops, crop_size, strong_crop,
    resized_crop_scale, resized_crop_ratio). params.yaml's values of the six after ctaugment are
    what runs did before these choices existed; semilearn 0.3.2 departs from them on EuroSAT and TissueMNIST
    (vertical flips; TissueMNIST's RandAugment without colour ops) and Semi-Aves (224 px crops of
    256 px images, a random resized crop for the strong view)."""

    horizontal_flip: bool
    pad_fraction: float
    strong: str                      # RandAugment variant fixmatch | usb, or ctaugment
    ctaugment: CTAugmentSettings     # used where strong is ctaugment
    vertical_flip: bool
    rand_augment_ops: str            # all | no_color (semisup.data.augment.OP_LISTS)
    crop_size: int | None            # None: the images' size; else train crops, evaluation centre
    strong_crop: str                 # pad_crop (the weak crop) | resized_crop
    resized_crop_scale: tuple[float, float]   # of the image's area (strong_crop resized_crop)
    resized_crop_ratio: tuple[float, float]   # width / height


class Normalizer:
    """(image / 255 - mean) / std per channel, as (image - 255 mean) / (255 std)."""

    def __init__(self, mean, std, device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images_uint8: Tensor) -> Tensor:
        images = (images_uint8.float() - self.mean) / self.std
        return images.contiguous(memory_format=self.memory_format)


class ImageModality(Modality):
    name = "image"
    view_kinds = ("weak", "strong")

    def __init__(self, pools: dict[str, Tensor], inputs: ImageInputs, augment: ImageAugment,
                 channels_last: bool):
        missing = [pool for pool in POOLS if pool not in pools]
        if missing:
            raise ValueError(f"the image data layer needs the pools {', '.join(missing)}")
        if augment.strong == "ctaugment" and (augment.rand_augment_ops, augment.strong_crop) != (
                "all", "pad_crop"):
            raise ValueError(f"CTAugment draws its own ops after the weak view: rand_augment_ops "
                             f"{augment.rand_augment_ops!r} and strong_crop "
                             f"{augment.strong_crop!r} apply to RandAugment only; use 'all' and "
                             f"'pad_crop' with ctaugment, or a RandAugment variant")
        self.pools, self.augment = pools, augment
        self.normalize = Normalizer(inputs.mean, inputs.std, pools["train"].device, channels_last)
        self.ctaugment = (CTAugment(augment.ctaugment, pools["train"].device)
                          if augment.strong == "ctaugment" else None)

    @classmethod
    def from_images(cls, train: Tensor, test: Tensor, extra_unlabeled: Tensor | None,
                    inputs: ImageInputs, augment: ImageAugment, channels_last: bool,
                    unlabeled_includes_train: bool = True) -> ImageModality:
        """The unlabeled set is the training set (labeled images included), then the extras; or
        the extras alone where the release keeps them apart (unlabeled_includes_train=False)."""
        if not unlabeled_includes_train:
            unlabeled = extra_unlabeled
        else:
            unlabeled = train if extra_unlabeled is None else torch.cat([train, extra_unlabeled])
        return cls({"train": train, "unlabeled": unlabeled, "test": test}, inputs, augment,
                   channels_last)

    def size(self, pool: str) -> int:
        return len(self.pools[pool])

    def views(self, pool: str, indices: Tensor, kinds: Sequence[str],
              generator: torch.Generator) -> list[Tensor]:
        self.check_kinds(kinds)
        images = self.pools[pool][indices]
        return [self.normalize(self.augmented(images, kind, generator)) for kind in kinds]

    def augmented(self, images: Tensor, kind: str, generator: torch.Generator) -> Tensor:
        if kind == "weak":
            return self.weak(images, generator)
        if self.ctaugment is not None:
            return self.ctaugment.augment(self.weak(images, generator), generator)
        augment = self.augment
        return strong_augment(images, generator, variant=augment.strong,
                              flip=augment.horizontal_flip, pad_fraction=augment.pad_fraction,
                              vertical_flip=augment.vertical_flip, crop_size=augment.crop_size,
                              ops=augment.rand_augment_ops, crop=augment.strong_crop,
                              resized_crop_scale=augment.resized_crop_scale,
                              resized_crop_ratio=augment.resized_crop_ratio)

    def weak(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return weak_augment(images, generator, flip=self.augment.horizontal_flip,
                            pad_fraction=self.augment.pad_fraction,
                            vertical_flip=self.augment.vertical_flip,
                            crop_size=self.augment.crop_size)

    # ---- CTAugment's probes and state ---------------------------------------------------------
    def probe(self, pool: str, indices: Tensor, labels: Tensor, kinds: Sequence[str],
              generator: torch.Generator) -> Probe | None:
        if self.ctaugment is None or "strong" not in kinds:
            return None
        images, policy = self.ctaugment.probe(self.weak(self.pools[pool][indices], generator),
                                              generator)
        return Probe(self.normalize(images), labels, policy, self.augment.ctaugment.probe_network)

    def learn(self, probe: Probe, probabilities: Tensor) -> dict[str, Tensor]:
        proximity = self.ctaugment.update(probe.policy, probabilities, probe.labels)
        return {"ctaugment_probe_proximity": proximity.mean().float()}

    def state_dict(self) -> dict:
        return {} if self.ctaugment is None else {"ctaugment": self.ctaugment.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if (self.ctaugment is not None) != ("ctaugment" in state):
            raise KeyError("the checkpoint has no CTAugment bin rates" if self.ctaugment else
                           "the checkpoint has CTAugment bin rates but this run's strong "
                           "augmentation is not ctaugment")
        if self.ctaugment is not None:
            self.ctaugment.load_state_dict(state["ctaugment"])

    def reset_state(self) -> None:
        if self.ctaugment is not None:
            self.ctaugment.reset()

    def batches(self, pool: str, batch_size: int) -> Iterator[Tensor]:
        """The pool's images as evaluation sees them: whole, or their centre crop_size crop
        (semilearn's evaluation view of Semi-Aves: CenterCrop(224))."""
        images, crop_size = self.pools[pool], self.augment.crop_size
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            yield self.normalize(batch if crop_size is None else centre_crop(batch, crop_size))


def image_train_data(images: ImageData, labeled_indices: Tensor, inputs: ImageInputs,
                     augment: ImageAugment, channels_last: bool, device) -> TrainData:
    """A loaded image dataset and its labeled split on the training device."""
    on = lambda tensor: None if tensor is None else tensor.to(device)
    modality = ImageModality.from_images(on(images.train_images), on(images.test_images),
                                         on(images.extra_unlabeled_images), inputs, augment,
                                         channels_last, images.unlabeled_includes_train)
    if not images.unlabeled_includes_train:
        unlabeled_labels = images.extra_unlabeled_labels
    elif images.extra_unlabeled_labels is None:
        unlabeled_labels = images.train_labels
    else:
        unlabeled_labels = torch.cat([images.train_labels, images.extra_unlabeled_labels])
    return TrainData(modality=modality, train_labels=on(images.train_labels),
                     labeled_indices=labeled_indices.to(device),
                     test_labels=on(images.test_labels), unlabeled_labels=on(unlabeled_labels))
