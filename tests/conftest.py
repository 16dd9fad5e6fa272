"""Shared fixtures: the committed BUS-BRA fixtures, and the full dataset when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures" / "busbra"
FULL_DATA_CANDIDATES = (REPO.parent / "shared" / "data" / "busbra",)


def full_data_root() -> Path | None:
    """The complete BUS-BRA root: $BUSDX_DATA, else ../shared/data/busbra; None if absent."""
    env = os.environ.get("BUSDX_DATA")
    for candidate in ([Path(env)] if env else []) + list(FULL_DATA_CANDIDATES):
        if (candidate / "bus_data.csv").is_file() and (candidate / "Images").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def busbra_root() -> Path:
    root = full_data_root()
    if root is None:
        pytest.skip("the complete BUS-BRA dataset is not available (set BUSDX_DATA)")
    return root


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artefacts worth looking at (screenshots, figures): test-output/."""
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    return out


@pytest.fixture(scope="session")
def stand_in_dir(tmp_path_factory) -> Path:
    """Stand-in models (tiny networks with the real models' inputs, outputs and card), built
    once for the session: tests read them and never write there."""
    from stand_in_models import build_stand_in_models

    return build_stand_in_models(tmp_path_factory.mktemp("stand_in_models"))


@pytest.fixture(scope="module")
def stand_in_client(stand_in_dir):
    """The API over the stand-in models."""
    from fastapi.testclient import TestClient

    from busdx.api.app import create_app

    with TestClient(create_app(stand_in_dir)) as client:
        yield client
