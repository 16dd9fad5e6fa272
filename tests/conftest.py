"""Shared fixtures: the committed BUS-BRA fixtures, the stand-in models, and, for the full-data
tier, the complete dataset and the bundled models' fold-5 evaluation (computed once per run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tiers import full_data_root, threads, unavailable

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures" / "busbra"
MODELS = REPO / "models"

# A test that asks for one of these reads the full datasets: it belongs to the full tier
# (`make reproduce`) whatever its markers say, so the fast tier can never start it by accident.
FULL_DATA_FIXTURES = {"busbra_root", "breast_root", "fold5", "fold5_segmenter", "study_baseline"}
# The full tier's longest tests (the studies re-run over every image), started first so that
# the parallel workers of `make reproduce` finish together rather than one waiting on the other.
LONGEST_FIRST = "test_a_study_rerun_on_the_full_data"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if FULL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.full_data)
    items.sort(key=lambda item: LONGEST_FIRST not in item.nodeid)  # stable: order kept else


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def breast_root() -> Path:
    """The complete BrEaST-Lesions-USG: $BUSDX_BREAST, else beside BUS-BRA."""
    import os

    from busdx.data.sites import is_breast_root

    root = os.environ.get("BUSDX_BREAST")
    busbra = full_data_root()
    candidate = Path(root) if root else (busbra.parent / "breast-lesions-usg" if busbra else None)
    if candidate is None or not is_breast_root(candidate):
        unavailable("the complete BrEaST-Lesions-USG dataset is not available (set BUSDX_BREAST "
                    "to its folder, the one holding clinical-data.csv)")
    return candidate


@pytest.fixture(scope="session")
def busbra_root() -> Path:
    root = full_data_root()
    if root is None:
        unavailable("the complete BUS-BRA dataset is not available (set BUSDX_DATA to its "
                    "folder, the one holding bus_data.csv and Images/)")
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


@dataclass(frozen=True)
class Fold5:
    """The bundled models on BUS-BRA's test fold, as their card was written: the records, the
    end-to-end predictions (predicted masks, as served) and how many masks came out empty."""

    records: list
    predictions: list
    empty_masks: int


def _test_fold() -> int:
    from busdx.evaluation.model_card import load_card
    from stand_in_models import REAL_MODELS_MISSING, real_models_dir

    if real_models_dir() is None:
        unavailable(REAL_MODELS_MISSING)
    return load_card(MODELS)["classifier"]["test"].get("test_fold", 5)


@pytest.fixture(scope="session")
def fold5(busbra_root) -> Fold5:
    """Fold 5 scored end to end once per run: every full-tier test of the bundled models'
    published numbers reads these predictions instead of analysing the 383 images again."""
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.classification import predict_records

    fold = _test_fold()
    records = make_split(load_index(busbra_root), SplitConfig(test_fold=fold)).test
    predictions, empty = predict_records(records, MODELS, "predicted", threads=threads())
    return Fold5(records, predictions, empty)


@pytest.fixture(scope="session")
def fold5_segmenter(busbra_root):
    """The segmenter alone on fold 5 against the ground-truth masks, once per run (a fixture of
    its own, so that parallel workers never compute one thing twice)."""
    from busdx.evaluation.segmentation import evaluate_segmenter

    return evaluate_segmenter(str(busbra_root), MODELS / "segmenter.onnx",
                              test_fold=_test_fold(), threads=threads())


@pytest.fixture(scope="session")
def study_baseline(busbra_root):
    """The served analysis of each unaltered validation image, computed once per run and
    shared by every study re-run of the full tier (studies/_runner.py: Baseline)."""
    from _runner import Baseline

    from busdx.inference.models import Models
    from stand_in_models import REAL_MODELS_MISSING, real_models_dir

    if real_models_dir() is None:
        unavailable(REAL_MODELS_MISSING)
    return Baseline(Models.load(MODELS, threads=threads()))
