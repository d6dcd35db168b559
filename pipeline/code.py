"""The digest of the code a rule's output depends on, for code-aware reruns and provenance.

A rule's code is its `pipeline` module, named as `python -m` runs it (pipeline.runs.train),
and every project module it imports, statically and transitively (imports inside functions
included), from `pipeline` and `semisup`, plus, for a job that uses registered components (an
algorithm, a network, a dataset), the module that registers each and everything that module
imports. A registry package (`semisup.algorithms`,
`semisup.models`, `semisup.data`) imports every module that registers a component (the
algorithms' package does so at run time); those edges alone are not followed for components
the job does not use, while every other import is: an algorithm that subclasses FixMatch
depends on fixmatch.py through its own import. So editing FixMatch's loss changes the digest of
the fixmatch runs and of the runs of its subclasses, editing pipeline/reports/tables.py that of
the tables rule only.

Each module counts by its syntax tree without docstrings (ast.unparse): a comment, a docstring or
the layout of the code changes nothing. The Snakefile gives each rule its digest as a parameter,
so Snakemake reruns a job whose code changed (and what follows from it); a training run records
its digest in metrics.json and MLflow.
"""
from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

import yaml

from semisup.catalog import algorithm_cards

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = {"pipeline": ROOT / "pipeline", "semisup": ROOT / "ssl" / "semisup"}
SCHEMA_PATH = ROOT / "pipeline" / "params.schema.yaml"
# registry package -> the kind of component its modules register (a run's config names one)
REGISTRIES = {"semisup.algorithms": "algorithm", "semisup.models": "model",
              "semisup.data": "dataset"}


def module_path(name: str) -> Path | None:
    """The source file of a project module or package (subpackages too: pipeline.runs.train is
    pipeline/runs/train.py), None for anything else."""
    top, _, rest = name.partition(".")
    if top not in SOURCE_ROOTS:
        return None
    base = SOURCE_ROOTS[top].joinpath(*rest.split(".")) if rest else SOURCE_ROOTS[top]
    for path in (base / "__init__.py", base.with_name(base.name + ".py")):
        if path.is_file():
            return path
    return None


@cache
def syntax_tree(name: str) -> ast.Module:
    return ast.parse(module_path(name).read_text(), filename=str(module_path(name)))


@cache
def normalized_source(name: str) -> str:
    """The module's code without docstrings and comments, in one canonical layout."""
    tree = ast.parse(module_path(name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


@cache
def imports(name: str) -> frozenset[str]:
    """The project modules `name` imports anywhere in its code, with their parent packages."""
    package = name if module_path(name).name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(syntax_tree(name)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)   # `from pkg import mod`
    with_parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 2)}
    return frozenset(m for m in with_parents if module_path(m) is not None and m != name)


@cache
def registered_names() -> dict[str, frozenset[str]]:
    """kind -> the registered names: the algorithms' cards (semisup.catalog), the networks and
    datasets the schema allows (study.model/dataset)."""
    study = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["study"]["properties"]
    return {"algorithm": frozenset(algorithm_cards()),
            "model": frozenset(study["model"]["enum"]), "dataset": frozenset(study["dataset"]["enum"])}


@cache
def provides(name: str) -> frozenset[str]:
    """The components a module of a registry package registers: for algorithms, the cards it
    gives (semisup.catalog); for networks and datasets, the registered names that appear in its
    code as string constants (tests check both against the registries themselves)."""
    package = name.rpartition(".")[0]
    if package not in REGISTRIES:
        return frozenset()
    if REGISTRIES[package] == "algorithm":
        return frozenset(card.name for card in algorithm_cards().values() if card.module == name)
    names = registered_names()[REGISTRIES[package]]
    constants = {node.value for node in ast.walk(ast.parse(normalized_source(name)))
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return frozenset(names & constants)


def providers(uses: dict[str, str]) -> list[str]:
    """The modules that register the components a job uses (kind -> name)."""
    found = []
    for package, kind in REGISTRIES.items():
        if kind in uses:
            folder = module_path(package).parent
            found += [f"{package}.{path.stem}" for path in sorted(folder.glob("*.py"))
                      if uses[kind] in provides(f"{package}.{path.stem}")]
    return found


def closure(root: str, uses: dict[str, str]) -> list[str]:
    """The modules a rule's module depends on, for a job that uses the components `uses`
    (kind -> name, e.g. {"algorithm": "fixmatch"}): what it imports, the modules that register
    those components and what they import. A registry package's own imports of the modules of
    other components are not followed; any other import of them is."""
    seen, todo = set(), [(root, None), *((module, None) for module in providers(uses))]
    while todo:
        name, importer = todo.pop()
        if name in seen or (importer is not None and registered_elsewhere(name, importer, uses)):
            continue
        seen.add(name)
        todo.extend((imported, name) for imported in imports(name))
    return sorted(seen)


def registered_elsewhere(name: str, importer: str, uses: dict[str, str]) -> bool:
    """Whether `importer` is the registry package of `name`, which registers only components
    this job does not use."""
    package = name.rpartition(".")[0]
    kind = REGISTRIES.get(package)
    return (kind is not None and importer == package and bool(provides(name))
            and uses.get(kind) not in provides(name))


def code_digest(root: str, **uses: str) -> str:
    """sha256 of the normalised code of `closure(root, uses)`; `root` is a rule's module as
    `python -m` names it (pipeline.runs.train)."""
    if module_path(root) is None:   # a renamed or moved module: say so, not a bare AttributeError
        raise ValueError(f"code_digest: no module {root!r} under {ROOT}; a rule names its module "
                         f"as `python -m` does (e.g. pipeline.runs.train): fix the name in the "
                         f"Snakefile (or wherever code_digest is called)")
    return _digest(root, tuple(sorted(uses.items())))


@cache
def _digest(root: str, uses: tuple[tuple[str, str], ...]) -> str:
    digest = hashlib.sha256()
    for name in closure(root, dict(uses)):
        digest.update(f"{name}\n{normalized_source(name)}\n".encode())
    return digest.hexdigest()
