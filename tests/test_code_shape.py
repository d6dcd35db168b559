"""The size of the code outside the tests: a function fits on a screen (at most 50 lines, from its
`def` to its last line, docstring included) and a module has one job (at most 400 lines)."""
import ast
from pathlib import Path

import pytest

from pipeline.config import ROOT

MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 400


def oversized(path: Path, source: str | None = None) -> list[str]:
    """One line per function of `path` over MAX_FUNCTION_LINES, and for the module itself if it
    is over MAX_MODULE_LINES."""
    source = path.read_text() if source is None else source
    where = path.relative_to(ROOT)
    found = []
    if len(source.splitlines()) > MAX_MODULE_LINES:
        found.append(f"{where}: {len(source.splitlines())} lines (at most {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno}: {node.name}() has {length} lines (at most "
                             f"{MAX_FUNCTION_LINES})")
    return found


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", [
    "pipeline",
    "tools",
    "ssl/semisup",
])
def test_functions_and_modules_stay_small(folder):
    found = [line for path in python_files(folder) for line in oversized(path)]
    assert python_files(folder), f"no Python files under {folder}"
    assert not found, "too long:\n" + "\n".join(found)


def test_a_long_function_and_a_long_module_are_named():
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "\n"
    found = oversized(ROOT / "pipeline/example.py", long_function)
    assert found == [f"pipeline/example.py:1: f() has {MAX_FUNCTION_LINES + 1} lines (at most "
                     f"{MAX_FUNCTION_LINES})"]
    long_module = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert oversized(ROOT / "pipeline/example.py", long_module) == [
        f"pipeline/example.py: {MAX_MODULE_LINES + 1} lines (at most {MAX_MODULE_LINES})"]
