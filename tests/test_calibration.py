"""Temperature scaling, calibration error and the sensitivity-keeping threshold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from busdx.training.calibration import (
    calibrate,
    expected_calibration_error,
    fit_platt,
    fit_temperature,
    nll,
    reliability,
    sensitivity_threshold,
    sigmoid,
)


def overconfident(n: int = 4000, scale: float = 3.0, seed: int = 0):
    """Labels drawn from sigmoid(z), logits reported as scale * z: too confident by ``scale``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < sigmoid(z)).astype(int)
    return scale * z, y


def test_temperature_undoes_overconfidence():
    logits, y = overconfident(scale=3.0)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(logits, y, t) < nll(logits, y)
    assert expected_calibration_error(calibrate(logits, t), y) < expected_calibration_error(
        sigmoid(logits), y
    )


def test_temperature_of_calibrated_logits_is_about_one():
    logits, y = overconfident(scale=1.0, seed=1)
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.1)


def test_ece_of_perfect_bins_is_zero_and_of_constant_is_gap():
    y = np.array([0, 1] * 50)
    assert expected_calibration_error(np.full(100, 0.5), y) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(100, 0.9), y) == pytest.approx(0.4)
    rel = reliability(np.full(100, 0.9), y, n_bins=15)
    assert rel.count.sum() == 100


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=80),
    st.integers(0, 2**31 - 1),
    st.floats(0.5, 1.0),
)
@example(probs=[0.0, 5e-324], seed=0, target=0.5)  # a gap with no midpoint (found in CI)
def test_threshold_keeps_sensitivity(probs, seed, target):
    probs = np.array(probs)
    y = np.random.default_rng(seed).integers(0, 2, len(probs))
    if y.sum() == 0:
        y[0] = 1
    t = sensitivity_threshold(probs, y, target)
    sens = (probs[y == 1] >= t).mean()
    assert sens >= target - 1e-12
    # the most specific such counts: a threshold above the nearest case over it loses them
    above = probs[probs >= t]
    assert (probs[y == 1] > above.min()).mean() < target
    # no case sits on it (unless nothing lies below), and nothing lies between it and the
    # nearest case on either side that would change a count
    if (probs < t).any():
        gap_low = probs[probs < t].max()
        if np.nextafter(gap_low, np.inf) == t:
            # no float lies between the two cases: the top of the gap, a cancer, keeps the counts
            assert np.any(probs[y == 1] == t)
            return
        assert not np.any(probs == t)
        gap_high = probs[probs > t].min()
        assert t == pytest.approx((gap_low + gap_high) / 2)


def test_threshold_sits_midway_between_the_last_cancer_kept_and_the_next_case():
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    y = np.array([1, 1, 0, 1, 0, 1])
    # 3 of 4 cancers at sensitivity 0.75: the third is at 0.6, the next case below at 0.3
    assert sensitivity_threshold(probs, y, 0.75) == pytest.approx(0.45)
    # all four: nothing below the last cancer, the threshold is that cancer's probability
    assert sensitivity_threshold(probs, y, 1.0) == pytest.approx(0.2)


def test_threshold_needs_malignant_cases():
    with pytest.raises(ValueError):
        sensitivity_threshold(np.array([0.1, 0.2]), np.array([0, 0]))


def test_platt_removes_a_class_weighting_shift():
    """A weighted loss adds log(pos_weight) to every logit: temperature cannot undo it, Platt can."""
    logits, y = overconfident(scale=1.0, seed=2)
    shifted = logits + np.log(2.1)
    a, b = fit_platt(shifted, y)
    assert a == pytest.approx(1.0, abs=0.1) and b == pytest.approx(-np.log(2.1), abs=0.15)
    platt = sigmoid(a * shifted + b)
    temp = calibrate(shifted, fit_temperature(shifted, y))
    assert expected_calibration_error(platt, y) < expected_calibration_error(temp, y)
    # the shipped form: offset b/a folded into the logit, temperature 1/a
    assert np.allclose(calibrate(shifted + b / a, 1 / a), platt)


def test_cheapest_option_within_tolerance_of_the_best_auc():
    from busdx.cli.classification import _cheapest_within

    crops = {"single": (0.3,), "multi": (0.15, 0.3, 0.45)}
    passes = {"a": 1, "b": 1, "ensemble": 2}
    scores = {("a", "none", "single"): (0.908, None), ("a", "none", "multi"): (0.924, None),
              ("a", "flip", "single"): (0.911, None), ("a", "flip", "multi"): (0.926, None),
              ("b", "none", "multi"): (0.915, None), ("ensemble", "none", "multi"): (0.935, None),
              ("ensemble", "none", "single"): (0.921, None)}
    assert _cheapest_within(scores, passes, crops, 0.005) == ("ensemble", "none", "multi")
    assert _cheapest_within(scores, passes, crops, 0.012) == ("a", "none", "multi")
    assert _cheapest_within(scores, passes, crops, 0.03) == ("a", "none", "single")
    # a two-view network (crop and whole image) costs two passes per crop, like an ensemble
    two_view = {("v", "none", "single"): (0.934, None), ("a", "flip", "single"): (0.931, None)}
    assert _cheapest_within(two_view, {"v": 2, "a": 1}, crops, 0.005) == ("v", "none", "single")
    assert _cheapest_within({**two_view, ("a", "none", "single"): (0.930, None)},
                            {"v": 2, "a": 1}, crops, 0.005) == ("a", "none", "single")
    # a latency budget: options over it do not compete, not even as the best
    budget = {**two_view, ("v", "flip", "single"): (0.95, None)}
    assert _cheapest_within(budget, {"v": 2, "a": 1}, crops, 0.005) == ("v", "flip", "single")
    assert _cheapest_within(budget, {"v": 2, "a": 1}, crops, 0.005, max_passes=2) == (
        "v", "none", "single")
    # a two-view network plus a crop network: three passes, inside a three-pass budget
    mixed = {**budget, ("v+c", "none", "single"): (0.947, None),
             ("v+c", "flip", "single"): (0.96, None)}
    assert _cheapest_within(mixed, {"v": 2, "a": 1, "v+c": 3}, crops, 0.005, max_passes=3) == (
        "v+c", "none", "single")


def test_mirror_options_of_an_ensemble_leave_out_the_crop_only_mirror():
    from busdx.cli.classification import _tta_options

    assert _tta_options("auto", "both") == ("none", "flip", "flip_crop")
    assert _tta_options("auto", "both", ensemble=True) == ("none", "flip")
    assert _tta_options("auto", "crop") == ("none", "flip")
    assert _tta_options("flip_crop", "both", ensemble=True) == ()


def test_wilson_interval_has_its_closed_form_at_zero_and_is_symmetric():
    from busdx.evaluation.classification import wilson_interval

    z = 1.959964
    lo, hi = wilson_interval(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(z * z / (20 + z * z))
    lo, hi = wilson_interval(68, 75)
    mirror = wilson_interval(7, 75)
    assert lo == pytest.approx(1 - mirror[1]) and hi == pytest.approx(1 - mirror[0])
    assert lo < 68 / 75 < hi <= 1.0
    # fewer cases, wider interval
    lo_few, hi_few = wilson_interval(34, 37)
    assert hi_few - lo_few > hi - lo
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_operating_point_records_the_counts_it_was_set_on():
    from busdx.evaluation.classification import fit_operating_point

    logits, y = overconfident(n=300, scale=1.0, seed=3)
    cal = fit_operating_point(logits, y)["calibration"]
    assert cal["val_cancers"] == int(y.sum()) and cal["val_benign"] == int((1 - y).sum())
    assert cal["val_cancers_called"] / cal["val_cancers"] == pytest.approx(cal["val_sensitivity"])
    assert cal["val_benign_cleared"] / cal["val_benign"] == pytest.approx(cal["val_specificity"])
