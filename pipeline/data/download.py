"""Rule `download`: fetch a dataset into data/raw/<dataset>/ and write its manifest
(array shapes, file sha256s) — the dataset digest every run records."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from semisup.data import get_dataset
from semisup.data.registry import sha256_file

from ..errors import UserError, argument_parser, cli
from ..files import read_json, write_json


def manifest_for(dataset: str, root: Path, files: list[Path], options: dict) -> dict:
    data = get_dataset(dataset).load(root, **options)
    if hasattr(data, "shapes"):   # audio: waveforms; text: texts
        shapes = data.shapes()
    else:
        shapes = {"train_images": list(data.train_images.shape),
                  "test_images": list(data.test_images.shape)}
        if data.extra_unlabeled_images is not None:
            shapes["extra_unlabeled_images"] = list(data.extra_unlabeled_images.shape)
    checksums = {str(path.relative_to(root)): sha256_file(path) for path in sorted(files)}
    return {"dataset": dataset, "options": options, "num_classes": data.num_classes,
            "class_names": data.class_names, "shapes": shapes, "files": checksums,
            "digest": hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()}


MANIFEST_KEYS = ("dataset", "options", "num_classes", "shapes", "files", "digest")


def train_shape(shapes) -> list | None:
    """The training set's shape in a manifest: its images', its waveforms' (audio) or its texts'."""
    if not isinstance(shapes, dict):
        return None
    return shapes.get("train_images", shapes.get("train_waveforms", shapes.get("train_texts")))


def read_manifest(path: Path) -> dict:
    """A dataset manifest, checked whole: every key this module writes, train images' shape, and
    the digest of its file checksums (a hand edit or another tool's file is named, not half-read)."""
    manifest = read_json(path, "dataset manifest")
    problems = [f"it lacks {key!r}" for key in MANIFEST_KEYS
                if not isinstance(manifest, dict) or key not in manifest]
    if not problems:
        shape = train_shape(manifest["shapes"])
        if not (isinstance(shape, list) and shape and isinstance(shape[0], int)):
            problems.append("shapes.train_images (or train_waveforms, train_texts) is not a list of sizes")
        elif not isinstance(manifest["files"], dict) or manifest["digest"] != hashlib.sha256(
                json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest():
            problems.append("its digest does not match its file checksums")
    if problems:
        raise UserError(f"the dataset manifest {path} is not one that the download rule wrote "
                        f"({'; '.join(problems)}): edited by hand, or written by another tool. "
                        f"Delete it and rerun snakemake, which checks the data and describes it "
                        f"again (runs made from other data then rerun)")
    return manifest


def verify_files(manifest: dict, root: Path) -> None:
    """Check every raw file against the manifest's sha256 (missing or corrupt -> clear error)."""
    for name, expected in manifest["files"].items():
        path = root / name
        if not path.exists():
            raise UserError(f"the raw data file {path} listed in {root}/manifest.json is missing; "
                            f"delete {root}/manifest.json and rerun snakemake to download it again")
        if sha256_file(path) != expected:
            raise UserError(f"the raw data file {path} does not match its sha256 in "
                            f"{root}/manifest.json (corrupt or changed); delete {path} and "
                            f"{root}/manifest.json and rerun snakemake to download it again")


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--options", default="{}", help="dataset options as JSON")
    parser.add_argument("--manifest", required=True, type=Path)
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    root = args.manifest.parent
    print(f"downloading {args.dataset} into {root} with options {options}", flush=True)
    files = get_dataset(args.dataset).download(root, **options)
    manifest = manifest_for(args.dataset, root, files, options)
    write_json(args.manifest, manifest)
    print(f"wrote {args.manifest}: {manifest['shapes']}, digest {manifest['digest'][:12]}")


if __name__ == "__main__":
    main()
