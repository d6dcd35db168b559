"""What the workflow needs to know of the registered algorithms and datasets before torch is
imported (a config is checked in a fraction of a second). Free of torch.

Algorithms: each module of semisup.algorithms is read as text (its syntax tree), not imported:
a class decorated with `@register` gives its card from the literals in its own class body:
`name`, `display_name`, `reference` (the codebase it follows), `figures` (the report figures
that show it), `hyperparameters` (YAML: each constructor keyword and its JSON schema) and
`foreign_keys` (keys of the references that mean something else here, with why). So an
algorithm lives in one place, its module: the config schema's list and blocks, the reports'
names and figure choices and the code digests all come from these cards.

Datasets: their classes and their inputs (an image dataset's channels, normalisation
statistics, whether weak augmentation flips it); `semisup.data` registers the download and load
functions under the same names. The datasets' options (and their defaults) are not facts: they
are parameters, in params.yaml."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import ClassVar

import yaml

ALGORITHMS_DIR = Path(__file__).with_name("algorithms")


@dataclass(frozen=True)
class AlgorithmCard:
    name: str
    module: str                       # e.g. semisup.algorithms.fixmatch
    description: str                  # the first paragraph of the module's docstring
    display_name: str
    reference: str = ""
    figures: tuple[str, ...] = ()
    hyperparameters: dict = field(default_factory=dict)   # keyword -> JSON schema
    foreign_keys: dict = field(default_factory=dict)      # reference's key -> why it is refused


CARD_FIELDS = ("name", "display_name", "reference", "figures", "hyperparameters", "foreign_keys")


def _class_literals(node: ast.ClassDef, path: Path) -> dict:
    """The card fields assigned literals in the class's own body."""
    values = {}
    for statement in node.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target = statement.target
        else:
            continue
        if isinstance(target, ast.Name) and target.id in CARD_FIELDS:
            try:
                values[target.id] = ast.literal_eval(statement.value)
            except ValueError as error:
                raise ValueError(f"{path}: {node.name}.{target.id} must be a literal (the "
                                 f"catalog reads it without running the code)") from error
    return values


def _registered_classes(tree: ast.Module) -> list[ast.ClassDef]:
    return [node for node in tree.body if isinstance(node, ast.ClassDef) and any(
        isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list)]


def _card(node: ast.ClassDef, path: Path, description: str) -> AlgorithmCard:
    values = _class_literals(node, path)
    missing = [key for key in ("name", "display_name") if key not in values]
    if missing:
        raise ValueError(f"{path}: the registered class {node.name} sets no {', '.join(missing)}")
    values["hyperparameters"] = yaml.safe_load(values.get("hyperparameters", "{}")) or {}
    values["figures"] = tuple(values.get("figures", ()))
    return AlgorithmCard(module=f"semisup.algorithms.{path.stem}", description=description, **values)


@cache
def algorithm_cards() -> dict[str, AlgorithmCard]:
    """Every registered algorithm's card, by name, in name order."""
    cards = {}
    for path in sorted(ALGORITHMS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        description = (ast.get_docstring(tree) or "").split("\n\n")[0].replace("\n", " ")
        for node in _registered_classes(tree):
            card = _card(node, path, description)
            if card.name in cards:
                raise ValueError(f"two algorithms are named {card.name!r}: {cards[card.name].module} "
                                 f"and {card.module}")
            cards[card.name] = card
    return dict(sorted(cards.items()))


def display_name(algorithm: str) -> str:
    """How tables and figures name an algorithm (its registered name if it has no card)."""
    card = algorithm_cards().get(algorithm)
    return card.display_name if card else algorithm


@dataclass(frozen=True)
class ImageInputs:
    """What an image dataset tells its networks (channels) and its data layer (normalisation,
    whether weak augmentation flips). Text and audio datasets will have their own kind."""

    channels: int
    mean: tuple[float, ...]        # per channel, images scaled to [0, 1]
    std: tuple[float, ...]
    horizontal_flip: bool          # weak augmentation flips (not digits: not symmetric)
    modality: ClassVar[str] = "image"


@dataclass(frozen=True)
class AudioInputs:
    """What an audio dataset tells its networks and data layer: mono waveforms (their sample
    rate is a dataset option, the clips' length a setting of the audio data layer)."""

    channels: int = 1
    modality: ClassVar[str] = "audio"


@dataclass(frozen=True)
class TextInputs:
    """A text dataset in USB's release format (semisup.data.usb_text): each training sample is
    its original text and two back-translations; tokenised for the network it trains."""

    modality: ClassVar[str] = "text"


@dataclass(frozen=True)
class ReleaseLabels:
    """A labeled set fixed by the dataset's release (Semi-Aves), not drawn per seed: the option
    that chooses it and how many labeled images each of its values gives."""

    option: str                                # e.g. "labeled_list"
    counts: tuple[tuple[str, int], ...]        # (option value, labeled images)

    def count(self, value: str) -> int | None:
        return dict(self.counts).get(value)


@dataclass(frozen=True)
class DatasetFacts:
    num_classes: int | None        # None: known once the data is read (image_folder)
    inputs: ImageInputs | AudioInputs | TextInputs
    release_labels: ReleaseLabels | None = None   # None: the split draws n_labels per class


# The networks that take waveforms (semisup.models.speech); an audio dataset needs one of them.
AUDIO_MODELS = ("hubert_base", "wav2vec2_base")
TEXT_MODELS = ("bert_base_uncased",)   # the networks that read token ids (their own tokenizer)

DIGITS_MEAN, DIGITS_STD = (0.3050,), (0.3760,)   # over all 1,797 images
DATASETS: dict[str, DatasetFacts] = {
    "digits": DatasetFacts(10, ImageInputs(1, DIGITS_MEAN, DIGITS_STD, horizontal_flip=False)),
    "digits_rgb32": DatasetFacts(10, ImageInputs(3, DIGITS_MEAN * 3, DIGITS_STD * 3,
                                                 horizontal_flip=False)),
    # FixMatch-pytorch's and TorchSSL's statistics (USB's code uses ImageNet's for CIFAR-10).
    "cifar10": DatasetFacts(10, ImageInputs(3, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                                            True)),
    "cifar100": DatasetFacts(100, ImageInputs(3, tuple(x / 255 for x in (129.3, 124.1, 112.4)),
                                              tuple(x / 255 for x in (68.2, 65.4, 70.4)), True)),
    # The FixMatch paper does not flip SVHN (digits are not symmetric).
    "svhn": DatasetFacts(10, ImageInputs(3, (0.4380, 0.4440, 0.4730), (0.1751, 0.1771, 0.1744),
                                         False)),
    "stl10": DatasetFacts(10, ImageInputs(3, tuple(x / 255 for x in (112.4, 109.1, 98.6)),
                                          tuple(x / 255 for x in (68.4, 66.6, 68.5)), True)),
    # USB's CV tasks: EuroSAT (RGB, resized 64 -> 32) and TissueMNIST (gray copied to 3
    # channels, resized 28 -> 32) with USB's (0.5, 0.5, 0.5) statistics; USB also flips them
    # vertically (train.vertical_flip, set by configs/usb-cv-*.yaml: a choice of USB's, not a
    # fact of the data). Semi-Aves with ImageNet's.
    "eurosat": DatasetFacts(10, ImageInputs(3, (0.5,) * 3, (0.5,) * 3, True)),
    "tissuemnist": DatasetFacts(8, ImageInputs(3, (0.5,) * 3, (0.5,) * 3, True)),
    "semi_aves": DatasetFacts(200, ImageInputs(3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                               True),
                              ReleaseLabels("labeled_list", (("l_train", 3959),
                                                             ("l_train_val", 5959)))),
    # ImageNet's statistics, for natural images; the classes are the folder's sub-folders.
    "image_folder": DatasetFacts(None, ImageInputs(3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                                   True)),
    # Audio: a user's folder of WAV files per class (the smoke study's test-made tones).
    "audio_folder": DatasetFacts(None, AudioInputs()),
    # USB's audio tasks (semisup.data.usb_audio): 16 kHz clips from USB's pickles. FSDnoisy18k's
    # labeled set is its release's train.pkl (1,773 clips), its unlabeled set ulb_train.pkl.
    "esc50": DatasetFacts(50, AudioInputs()),
    "fsdnoisy": DatasetFacts(20, AudioInputs(), ReleaseLabels("labeled_file", (("train.pkl", 1773),))),
    "gtzan": DatasetFacts(10, AudioInputs()),
    "urbansound8k": DatasetFacts(10, AudioInputs()),
    "superbks": DatasetFacts(10, AudioInputs()),
    # USB's NLP tasks (semilearn 0.3.2, config/usb_nlp): the classes of its json releases.
    "imdb": DatasetFacts(2, TextInputs()),
    "ag_news": DatasetFacts(4, TextInputs()),
    "amazon_review": DatasetFacts(5, TextInputs()),
    "yahoo_answers": DatasetFacts(10, TextInputs()),
    "yelp_review": DatasetFacts(5, TextInputs()),
}
