"""The layers of the code: no module imports from a layer above its own. From low to high: the
library `semisup` (it never imports the workflow), the pipeline's core (config, run configs,
validation, code digests, errors, files), its stages `pipeline.data`, `pipeline.runs`,
`pipeline.reports`, the Snakefile's helpers `pipeline.workflow`, then tools/ (and the Snakefile).
Modules of one layer may import each other. Every import counts, those inside functions too
(pipeline/code.py follows them as well)."""
import ast
from pathlib import Path

import pytest

from pipeline.config import ROOT

LAYERS = ("semisup", "pipeline core", "pipeline.data", "pipeline.runs", "pipeline.reports",
          "pipeline.workflow", "tools")
CORE = {"pipeline", "pipeline.code", "pipeline.config", "pipeline.errors", "pipeline.files",
        "pipeline.run_config", "pipeline.validation", "pipeline.variants"}
SOURCES = {"semisup": ROOT / "ssl", "pipeline": ROOT, "tools": ROOT}   # top package -> its root
TOOLS = {path.stem for path in (ROOT / "tools").glob("*.py")}   # run as scripts: `import <stem>`


def layer(module: str) -> str | None:
    """The layer of a project module, None for any other (the standard library, third parties)."""
    top = module.split(".")[0]
    if top == "semisup":
        return "semisup"
    if top == "tools" or top in TOOLS:
        return "tools"
    if top != "pipeline":
        return None
    if module in CORE:
        return "pipeline core"
    stage = ".".join(module.split(".")[:2])
    if stage in LAYERS:
        return stage
    raise AssertionError(f"{module} has no layer: add it to LAYERS or CORE in {__file__}")


def module_name(path: Path) -> str:
    root = ROOT / "ssl" if path.is_relative_to(ROOT / "ssl") else ROOT
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_project_module(name: str) -> bool:
    top = name.split(".")[0]
    if top not in SOURCES:
        return False
    base = SOURCES[top].joinpath(*name.split("."))
    return (base / "__init__.py").is_file() or base.with_suffix(".py").is_file()


def imported_modules(source: str, module: str, is_package: bool = False):
    """(line, the import as written, the module it imports) for every import of `source`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, f"import {alias.name}", alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            written = f"from {'.' * node.level}{node.module or ''} import "
            for alias in node.names:
                submodule = f"{base}.{alias.name}"   # `from package import module`
                yield (node.lineno, written + alias.name,
                       submodule if is_project_module(submodule) else base)


def upward_imports(path: Path, source: str | None = None, module: str | None = None) -> list[str]:
    """Each import of the module at `path` from a higher layer than its own, as one line."""
    module = module or module_name(path)
    own = LAYERS.index(layer(module))
    found = []
    for line, written, target in imported_modules(source or path.read_text(), module,
                                                  path.name == "__init__.py"):
        target_layer = layer(target)
        if target_layer is not None and LAYERS.index(target_layer) > own:
            found.append(f"{path.relative_to(ROOT)}:{line}: `{written}` ({module}, layer "
                         f"{LAYERS[own]}) imports {target}, of the higher layer {target_layer}")
    return found


def project_modules() -> list[Path]:
    return sorted([*(ROOT / "ssl/semisup").rglob("*.py"), *(ROOT / "pipeline").rglob("*.py"),
                   *(ROOT / "tools").glob("*.py")])


def test_no_module_imports_from_a_higher_layer():
    found = [line for path in project_modules() for line in upward_imports(path)]
    assert not found, "imports from a higher layer:\n" + "\n".join(found)


def test_every_module_has_a_layer():
    assert {layer(module_name(path)) for path in project_modules()} == set(LAYERS)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("pipeline.runs.train", "def f():\n    from ..reports import figures\n",
     "`from ..reports import figures` (pipeline.runs.train, layer pipeline.runs) imports "
     "pipeline.reports.figures, of the higher layer pipeline.reports"),
    ("semisup.train", "import pipeline.config\n",
     "`import pipeline.config` (semisup.train, layer semisup) imports pipeline.config, of the "
     "higher layer pipeline core"),
    ("pipeline.config", "from .data.download import read_manifest\n",
     "imports pipeline.data.download, of the higher layer pipeline.data"),
])
def test_an_upward_import_is_named_with_its_line(module, source, expected):
    path = ROOT / ("ssl" if module.startswith("semisup") else "") / (
        module.replace(".", "/") + ".py")
    found = upward_imports(path, source, module)
    assert len(found) == 1 and expected in found[0], found


def test_imports_within_a_layer_or_downwards_are_allowed():
    source = ("from . import checkpoints\nfrom ..config import RunConfig\n"
              "from ..data.download import read_manifest\nimport semisup.train\nimport torch\n")
    assert upward_imports(ROOT / "pipeline/runs/train.py", source, "pipeline.runs.train") == []
