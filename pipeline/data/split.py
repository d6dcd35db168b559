"""Rule `split`: the labeled indices of one (dataset, n_labels, seed), balanced per class, with
their sha256. Shared by every algorithm; the unlabeled set is the whole training set. A dataset
whose release fixes its labeled set (semisup.catalog: release_labels, Semi-Aves) is not loaded:
its split is its whole training set, n_labels checked against the manifest's count."""
from __future__ import annotations

from pathlib import Path

from semisup.catalog import DATASETS
from semisup.data import get_dataset
from semisup.data.splits import make_split, release_split

from ..errors import argument_parser, cli
from ..files import write_json
from .download import read_manifest, train_shape, verify_files


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--n-labels", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    manifest = read_manifest(args.manifest)
    root = args.manifest.parent
    verify_files(manifest, root)
    dataset, release = manifest["dataset"], DATASETS[manifest["dataset"]].release_labels
    if release is not None:   # the labeled set is the release's training set: nothing to draw
        option = f"datasets.{dataset}.{release.option}={manifest['options'][release.option]}"
        split = release_split(train_shape(manifest["shapes"])[0], args.n_labels, args.seed,
                              dataset, option)
    else:
        data = get_dataset(dataset).load(root, **manifest["options"])
        split = make_split(data.train_labels.numpy(), args.n_labels, data.num_classes, args.seed,
                           dataset)
    split["dataset_digest"] = manifest["digest"]
    write_json(args.out, split)
    print(f"wrote {args.out}: {len(split['labeled_indices'])} labeled indices, "
          f"split_sha256 {split['split_sha256'][:12]}")


if __name__ == "__main__":
    main()
