"""The package is laid out along the way data flows, and no import climbs back up."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "busdx"
# each layer may import the ones before it; training and inference are siblings (neither
# imports the other); the leaf modules at the top (errors, numeric, release, hardware) import
# no layer
LAYERS = ["data", "models", "training", "inference", "evaluation", "api", "pacs", "web", "cli"]
SIBLINGS = {("training", "inference"), ("inference", "training")}
LEAVES = {"errors", "numeric", "release", "hardware"}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("busdx."):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("busdx.")]
    return found


def test_no_import_climbs_back_up():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        here = parts[0]
        for line, module in _imports(path):
            there = module.split(".")[1]
            where = f"{path.relative_to(SRC)}:{line} imports {module}"
            if here in LEAVES and there in LAYERS or here in LAYERS and there in LAYERS and (
                    LAYERS.index(there) > LAYERS.index(here) or (here, there) in SIBLINGS):
                wrong.append(where)
    assert wrong == []


def test_one_sigmoid():
    """The logistic function is defined once (busdx.numeric), not beside every caller."""
    defined = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if "def sigmoid(" in p.read_text(encoding="utf-8")
               or "def _sigmoid(" in p.read_text(encoding="utf-8")]
    assert defined == ["numeric.py"]
