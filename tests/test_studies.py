"""The studies in studies/: their feature code, and their recorded answers reproduced."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "studies" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shape_features_of_a_dark_upright_ellipse():
    study = _load("shape_features")
    yy, xx = np.mgrid[:200, :200]
    mask = ((yy - 80) / 40.0) ** 2 + ((xx - 100) / 20.0) ** 2 <= 1.0  # twice as tall as wide
    image = np.full((200, 200), 0.5, dtype=np.float32)
    image[mask] = 0.1  # hypoechoic
    image[121:170, 80:121] = 0.2  # a shadow below it
    f = dict(zip(study.FEATURES, study.features(image, mask.astype(np.uint8)), strict=True))
    assert f["height_over_width"] == pytest.approx(81 / 41, rel=0.01)
    assert f["minor_over_major"] == pytest.approx(0.5, rel=0.05)
    assert f["abs_sin_angle"] == pytest.approx(1.0, abs=0.01)  # long axis vertical
    assert f["solidity"] > 0.95 and 0.7 < f["circularity"] < 0.9  # 0.84 for a true 2:1 ellipse
    assert f["log_echo_ratio"] < -1.0 and f["log_posterior_ratio"] < -0.8
    assert f["heterogeneity"] == pytest.approx(0.0, abs=1e-9)
    assert study.features(image, np.zeros((200, 200), np.uint8)) is None


@pytest.mark.full_data
@pytest.mark.slow
def test_shape_features_study_reproduces_its_recorded_answer(busbra_root):
    study = _load("shape_features")
    recorded = json.loads((ROOT / "reports" / "studies" / "shape_features.json").read_text())
    result = study.study(study.collect(str(busbra_root), None, threads=2))
    for key in ("val_auc_classifier_alone", "val_auc_combined_out_of_fold", "gain"):
        assert result[key] == pytest.approx(recorded[key], abs=1e-4)
    assert result["worth_building"] == recorded["worth_building"]
