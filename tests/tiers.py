"""The two test tiers (tests/README.md): where the full datasets are, and what a test does when
something it needs is not here.

``make test`` runs the fast tier and skips, with its reason, what is missing. ``make reproduce``
and CI set ``BUSDX_TESTS_STRICT=1``: there a missing dataset, model or browser fails the test
with the same message, so a full-tier run can never pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
FULL_DATA_CANDIDATES = (REPO.parent / "shared" / "data" / "busbra",)
STRICT_ENV = "BUSDX_TESTS_STRICT"


def strict() -> bool:
    """True where a missing dataset, model or browser must fail the run (CI, make reproduce)."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it where the run must not skip (see ``strict``)."""
    if strict():
        pytest.fail(f"{reason} [{STRICT_ENV}=1: this run must not skip it]", pytrace=False)
    pytest.skip(reason)


def full_data_root() -> Path | None:
    """The complete BUS-BRA root: $BUSDX_DATA, else ../shared/data/busbra; None if absent."""
    env = os.environ.get("BUSDX_DATA")
    for candidate in ([Path(env)] if env else []) + list(FULL_DATA_CANDIDATES):
        if (candidate / "bus_data.csv").is_file() and (candidate / "Images").is_dir():
            return candidate
    return None


def threads() -> int:
    """ONNX Runtime threads for a test that scores many images: both cores in a serial run, one
    per worker when pytest-xdist runs the tier in parallel (make reproduce), where two workers
    of one thread each get more done than one of two threads."""
    return 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
