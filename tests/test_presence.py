"""The presence check ("does the image show a lesion at all?", busdx.evaluation.presence): its
examples, its threshold rule, its graph output and what the product does with it."""

from __future__ import annotations

import numpy as np
import pytest

from busdx.data.windows import lesion_free_window, lesion_window_cut
from busdx.evaluation import presence as pr


def _image_with_lesion(h=100, w=160, box=(30, 50, 20, 40)):
    image = np.random.default_rng(0).random((h, w)).astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = 1
    return image, mask


def test_a_lesion_window_is_a_window_sized_cut_over_the_lesion():
    image, mask = _image_with_lesion()
    window = lesion_free_window(mask)
    cut = lesion_window_cut(image, mask)
    assert cut.shape == (window.bottom - window.top, window.right - window.left)
    # the cut is the part of the image that holds the whole lesion
    rows, cols = np.nonzero(mask)
    found = [(y, x) for y in range(image.shape[0] - cut.shape[0] + 1)
             for x in range(image.shape[1] - cut.shape[1] + 1)
             if np.array_equal(image[y:y + cut.shape[0], x:x + cut.shape[1]], cut)]
    assert len(found) == 1
    y, x = found[0]
    assert y <= rows.min() and rows.max() < y + cut.shape[0]
    assert x <= cols.min() and cols.max() < x + cut.shape[1]
    # a lesion taller than the window (a strip beside it), grown by a quarter, gets none
    wide_image, wide = _image_with_lesion(box=(10, 90, 10, 40))
    assert lesion_free_window(wide) is not None
    assert lesion_window_cut(wide_image, wide) is None
    assert lesion_window_cut(image, np.zeros_like(mask)) is None


def test_the_threshold_keeps_the_share_on_every_site():
    rng = np.random.default_rng(1)
    a, b = rng.normal(3, 1, 200), rng.normal(1, 1, 100)
    t = pr.threshold_keeping({"a": a, "b": b}, keep=0.99)
    assert (a >= t).mean() >= 0.99 and (b >= t).mean() >= 0.99
    # the highest such threshold: the next score up would lose a lesion image of b
    assert t == np.sort(b)[1]
    assert pr.threshold_keeping({"a": a, "empty": np.array([])}) == np.sort(a)[2]
    with pytest.raises(Exception, match="no held-out"):
        pr.threshold_keeping({"empty": np.array([])})


def test_the_fit_folds_its_standardisation_into_one_linear_logit():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 5, (60, 4)), rng.normal(1, 5, (60, 4))]) + 100
    y = np.r_[np.zeros(60, bool), np.ones(60, bool)]
    model = pr.fit(x, y)
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=pr.C, max_iter=5000).fit(scaler.transform(x), y)
    np.testing.assert_allclose(model.logits(x),
                               reference.decision_function(scaler.transform(x)), atol=1e-8)
    with pytest.raises(Exception, match="with and without"):
        pr.fit(x, np.ones(len(x), bool))


def test_out_of_fold_scores_never_come_from_a_fit_on_their_own_group():
    """A group whose label contradicts its inputs scores as the others of its inputs when held
    out: had it been fitted on, its own label would pull its score."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (100, 2))
    y = x[:, 0] > 0
    groups = np.arange(100) // 2
    scores = pr.out_of_fold(x, y, groups, (x[:0], y[:0]), folds=5)
    assert ((scores > 0) == y).mean() > 0.9
    # the groups go to folds in a seeded shuffle: the same seed, the same scores
    np.testing.assert_array_equal(scores, pr.out_of_fold(x, y, groups, (x[:0], y[:0]), folds=5))


def test_balanced_sites_weigh_the_same_and_pull_the_fit_toward_the_smaller_site():
    weights = pr.site_weights(["a"] * 30 + ["b"] * 10)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[:30].sum() == pytest.approx(weights[30:].sum())
    # the small site's boundary lies elsewhere: weighed as much as the large one, it moves
    # the fitted boundary toward its own
    rng = np.random.default_rng(4)
    big, small = rng.normal(0, 1, (300, 1)), rng.normal(0, 1, (30, 1))
    x, y = np.concatenate([big, small]), np.r_[big[:, 0] > 0, small[:, 0] > 1]
    sites = np.repeat([0, 1], [300, 30])
    plain, balanced = pr.fit(x, y, c=10), pr.fit(x, y, c=10, weights=pr.site_weights(sites))
    crossing = [-m.bias / m.weights[0] for m in (plain, balanced)]
    assert 0 < crossing[0] < crossing[1] < 1
    # out of fold, the held-out rows are still never fitted on, and weighing changes the fit
    groups = np.arange(30)
    held = pr.out_of_fold(small, y[300:], groups, (big, y[:300]), c=10, balance_sites=True)
    assert not np.allclose(held, pr.out_of_fold(small, y[300:], groups, (big, y[:300]), c=10))


def _toy_segmenter(path):
    """A graph with the segmenter's input and outputs: the logits are the image minus a half,
    the features its mean and its maximum."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Sub", ["image", "half"], ["mask_logits"]),
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("GlobalMaxPool", ["image"], ["peak"]),
        helper.make_node("Concat", ["pooled", "peak"], ["both"], axis=1),
        helper.make_node("Flatten", ["both"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                     ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT,
                                       ["batch", 1, 32, 32]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return model


def test_the_graph_output_is_the_fitted_logit(tmp_path):
    """The `presence` output computes, inside the graph, what the fit computes from the
    features and the mask statistics read in numpy; a refit replaces it."""
    import onnx
    import onnxruntime as ort

    from busdx.models.contract import PRESENCE_OUTPUT

    graph = _toy_segmenter(tmp_path / "toy.onnx")
    plain = ort.InferenceSession(str(tmp_path / "toy.onnx"))
    images = [np.random.default_rng(k).random((40, 50)) ** (k + 1) for k in range(6)]
    x = pr.check_inputs(plain, images, 32)
    assert x.shape == (6, 4)
    np.testing.assert_allclose(x[:, 2], x[:, 1] - 0.5, atol=1e-6)  # the highest logit
    model = pr.PresenceModel(np.array([1.0, -2.0, 0.5, 3.0]), -0.25, 6)
    with_check = pr.with_presence_output(graph, model)
    again = pr.with_presence_output(with_check, pr.PresenceModel(model.weights * 2, 1.0, 6))
    assert sum(o.name == PRESENCE_OUTPUT for o in again.graph.output) == 1
    refit = pr.PresenceModel(model.weights * 2, 1.0, 6)
    for proto, fitted in ((with_check, model), (again, refit)):
        session = ort.InferenceSession(proto.SerializeToString())
        got = [session.run([PRESENCE_OUTPUT], {"image": pr.prepare(i, 32)[0][None, None]})[0][0]
               for i in images]
        np.testing.assert_allclose(got, fitted.logits(x), rtol=1e-4, atol=1e-4)
    onnx.checker.check_model(again)
    no_features = onnx.helper.make_model(onnx.helper.make_graph(
        [], "bare", [], []), opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(Exception, match="features"):
        pr.with_presence_output(no_features, model)


def _stand_in_with_features(directory):
    """The stand-in release, its segmenter given a ``features`` output (the image's mean and
    maximum), as an exported segmenter has."""
    import onnx
    from onnx import TensorProto, helper

    from stand_in_models import build_stand_in_models, segmenter_graph

    build_stand_in_models(directory)
    graph = segmenter_graph()
    graph.node.extend([
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("GlobalMaxPool", ["image"], ["peak"]),
        helper.make_node("Concat", ["pooled", "peak"], ["both"], axis=1),
        helper.make_node("Flatten", ["both"], ["features"]),
    ])
    graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / "segmenter.onnx"))
    from busdx.evaluation.model_card import update_card

    update_card(directory, "segmenter", {"file": "segmenter.onnx"})  # the graph's new digest
    return directory


def test_the_check_is_fitted_into_the_release_and_the_product_obeys_it(fixtures_root,
                                                                       tmp_path, capsys):
    """`busdx evaluate presence` writes the check into the staging graph and its threshold into
    the release, with the selection scores as evidence; the product reports the logit, and
    below the threshold says "no lesion" (no outline, no call, the note says why)."""
    import json
    from dataclasses import replace

    import onnxruntime as ort

    from busdx.cli.main import main
    from busdx.inference.models import Models
    from busdx.inference.pipeline import DISMISSED_NOTE, NO_LESION, analyze
    from busdx.models.contract import PRESENCE_OUTPUT
    from busdx.release import load_release
    from stand_in_models import synthetic_image

    stage = _stand_in_with_features(tmp_path / "stage")
    assert main(["evaluate", "presence", "--data", str(fixtures_root), "--breast",
                 str(fixtures_root.parent / "breast-lesions-usg"), "--models", str(stage),
                 "--threads", "1"]) == 0
    assert "presence threshold" in capsys.readouterr().out
    threshold = load_release(stage / "release.json").segmenter.presence_threshold
    assert threshold is not None
    evidence = json.loads((stage / "evidence" / "segmenter.presence.json").read_text())
    assert evidence["kind"] == "selection"
    assert evidence["results"]["threshold"] == pytest.approx(threshold)
    assert set(evidence["results"]["selection"]) == {"busbra_validation",
                                                     "breast_dev_out_of_fold"}

    models = Models.load(stage, threads=1)
    assert models.presence_threshold == pytest.approx(threshold)
    image = synthetic_image()
    seen = analyze(image, replace(models, presence_threshold=-1e9), render_overlays=False,
                   trim_margins=False)
    assert seen.lesion_found and seen.label != NO_LESION
    x, _ = pr.prepare(seen.image, models.segmenter_size)  # the decoded image, in [0, 1]
    logit = ort.InferenceSession(str(stage / "segmenter.onnx")).run(
        [PRESENCE_OUTPUT], {"image": x[None, None]})[0][0]
    assert seen.presence == pytest.approx(float(logit), rel=1e-5)
    assert seen.to_json(images=False)["presence"] == pytest.approx(float(logit), rel=1e-5)
    gone = analyze(image, replace(models, presence_threshold=seen.presence + 1),
                   render_overlays=False, trim_margins=False)
    assert not gone.lesion_found and gone.label == NO_LESION and gone.note == DISMISSED_NOTE
    assert not gone.mask.any() and gone.measurements is None

    # end to end, an image in which no lesion is found gets no call: scored as the lowest
    # probability, not as the whole image's reference probability
    from busdx.evaluation.classification import NOT_FOUND_LOGIT
    from busdx.evaluation.external import evaluate_external, read_external

    breast = read_external(fixtures_root.parent / "breast-lesions-usg")
    nothing = evaluate_external(breast, replace(models, presence_threshold=1e9), reps=10,
                                progress=False)
    assert nothing.predictions and all(p.logit == NOT_FOUND_LOGIT and p.prob < 1e-6
                                       for p in nothing.predictions)
    assert nothing.classification.empty_masks == len(nothing.predictions)

def test_refitting_either_check_gives_the_same_graph_bytes(tmp_path):
    """A refit replaces a head where it was: the same fits give the same file whatever was
    added after them, so a second pass of the settings keeps the release's version."""
    from busdx.evaluation.appearance import AppearanceModel, with_appearance_output

    graph = _toy_segmenter(tmp_path / "toy.onnx")
    presence = pr.PresenceModel(np.array([1.0, -2.0, 0.5, 3.0]), -0.25, 6)
    appearance = AppearanceModel(np.array([0.5, 0.7]), np.eye(2), 6, 0.1)
    first = with_appearance_output(pr.with_presence_output(graph, presence), appearance)
    again = pr.with_presence_output(with_appearance_output(first, appearance), presence)
    assert again.SerializeToString() == first.SerializeToString()
    moved = pr.with_presence_output(first, pr.PresenceModel(presence.weights, 0.0, 6))
    assert moved.SerializeToString() != first.SerializeToString()
    assert [o.name for o in moved.graph.output] == [o.name for o in first.graph.output]
