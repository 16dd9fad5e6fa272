import numpy as np
import pytest

from busdx.evaluation.metrics import dice, iou, summarise, summarise_by_group


def test_dice_and_iou_of_known_overlap():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 pixels
    b[:, 3:8] = True  # 50 pixels, 20 shared
    assert dice(a, b) == pytest.approx(2 * 20 / 100)
    assert iou(a, b) == pytest.approx(20 / 80)


def test_identical_disjoint_and_empty_masks():
    a = np.eye(6, dtype=np.uint8)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, 1 - a) == 0.0 and iou(a, 1 - a) == 0.0
    empty = np.zeros((6, 6))
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(a, empty) == 0.0


def test_dice_iou_relation_holds():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random((2, 16, 16)) > 0.5
        d, j = dice(a, b), iou(a, b)
        assert d == pytest.approx(2 * j / (1 + j))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_summaries():
    s = summarise([0.5, 1.0])
    assert s["mean"] == 0.75 and s["std"] == 0.25 and s["n"] == 2 and s["min"] == 0.5
    g = summarise_by_group([0.2, 0.4, 1.0], ["b", "b", "a"])
    assert list(g) == ["a", "b"] and g["b"]["mean"] == pytest.approx(0.3)
