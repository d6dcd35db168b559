"""The workflow's steps: what turns files into tensors for `semisup`, and its results into files,
MLflow runs and reports.

The library these steps drive is the one beside them (ssl/semisup of the same checkout), never
another installed copy: the code digests name that code, and the algorithm catalog reads its
modules. So this package puts that folder first on the import path; jobs get it through
PYTHONPATH (pipeline/workflow/__init__.py)."""
import sys
from pathlib import Path

_LIBRARY = str(Path(__file__).resolve().parent.parent / "ssl")
if "semisup" not in sys.modules and sys.path[:1] != [_LIBRARY]:
    sys.path.insert(0, _LIBRARY)
