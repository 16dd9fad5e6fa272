"""Classifier builders, the ResNet50 freezing rule, ONNX export (logit and exact CAM), metrics
against scikit-learn, the bootstrap, and a tiny training run on the fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from busdx.errors import BusdxError
from busdx.evaluation.classification import (
    binary_metrics,
    birads_agreement,
    bootstrap_auc,
    roc_auc,
    roc_curve,
    spearman,
    weighted_kappa,
)
from busdx.evaluation.model_card import load_card, write_card
from busdx.models.classification import (
    ClassifierSpec,
    ExportWrapper,
    ResNet50Recipe,
    build_classifier,
    export_onnx,
    is_keras_frozen,
)

ONNX_TOL = 1e-4  # float32 export vs torch, absolute, on logits of order 1


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return build_classifier(ClassifierSpec(arch="lite0")).eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_classifier(ClassifierSpec(arch="resnet50", weights="none"))
    # make the batch norm's running statistics non-trivial, as after training
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_lite_loads_imagenet_weights_and_shapes(lite):
    from busdx.models.pretrained import lite_state_dict

    ref = lite_state_dict("tf_efficientnet_lite0")["conv_stem.weight"]
    assert torch.equal(lite.backbone.conv_stem.weight, ref)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert lite(x).shape == (2, 1)
        assert lite.feature_map(x).shape == (2, 1280, 7, 7)


def test_resnet50_freezes_keras_first_100_layers(resnet):
    frozen = {n for n, p in resnet.backbone.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in resnet.backbone.named_parameters() if p.requires_grad}
    assert "conv1.weight" in frozen and "layer2.3.bn3.bias" in frozen
    assert "layer3.0.downsample.0.weight" in frozen  # conv4_block1_0_conv
    assert "layer3.1.conv3.weight" in frozen  # Keras layer 99, conv4_block2_3_conv
    assert "layer3.1.bn3.weight" in trainable  # Keras layer 100, conv4_block2_3_bn
    assert "layer3.2.conv1.weight" in trainable and "layer4.2.conv3.weight" in trainable
    assert all(p.requires_grad for p in resnet.dense.parameters())
    # the conv and batch-norm layers among Keras's layers 0-99: conv1 (2), conv2_x (8 + 6 + 6),
    # conv3_x (8 + 3 * 6), conv4_block1 (8), conv4_block2 up to 3_conv (5)
    convs_bns = {n.rsplit(".", 1)[0] for n in frozen}
    assert len(convs_bns) == 2 + 20 + 26 + 8 + 5
    assert not is_keras_frozen("layer3.10.conv1")


def test_resnet50_frozen_batchnorms_stay_in_eval(resnet):
    resnet.train()
    try:
        assert not resnet.backbone.bn1.training
        assert not resnet.backbone.layer3[1].bn2.training
        assert resnet.backbone.layer3[1].bn3.training
        assert resnet.bn.training
    finally:
        resnet.eval()


def test_flip_tta_export_averages_mirrors_and_keeps_cam_exact(lite, tmp_path):
    import onnxruntime as ort

    path = export_onnx(lite, tmp_path / "tta.onnx", tta="flip")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain, _ = ExportWrapper(lite)(x)
        mirrored, _ = ExportWrapper(lite)(torch.flip(x, dims=[3]))
    logit, cam = session.run(None, {"image": x.numpy()})
    assert np.abs(logit - ((plain + mirrored) / 2).numpy()).max() < ONNX_TOL
    assert np.abs(cam.mean(axis=(2, 3)) + lite.fc.bias.item() - logit).max() < ONNX_TOL
    # mirroring the input mirrors the map and leaves the logit unchanged
    logit_m, cam_m = session.run(None, {"image": torch.flip(x, dims=[3]).numpy()})
    assert np.abs(logit_m - logit).max() < ONNX_TOL
    assert np.abs(cam_m[..., ::-1] - cam).max() < ONNX_TOL


def test_ensemble_logit_is_the_members_mean_and_cam_stays_exact(lite, tmp_path):
    import onnxruntime as ort

    from busdx.models.classification import ClassifierEnsemble

    torch.manual_seed(1)
    other = build_classifier(ClassifierSpec(arch="lite1"), pretrained=False).eval()
    with torch.no_grad():
        other.fc.bias.fill_(0.7)
    ensemble = ClassifierEnsemble([lite, other])
    path = export_onnx(ensemble, tmp_path / "ensemble.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        members = [ExportWrapper(m)(x)[0] for m in (lite, other)]
    logit, cam = session.run(None, {"image": x.numpy()})
    assert np.abs(logit - ((members[0] + members[1]) / 2).numpy()).max() < ONNX_TOL
    bias = ensemble.fc.bias.item()
    assert np.abs(cam.mean(axis=(2, 3)) + bias - logit).max() < ONNX_TOL


def test_two_view_and_crop_networks_ensemble_in_three_passes(tmp_path):
    """A two-view network plus a crop network: the crop network sees view 0 only, the logit is
    the members' mean, the CAM identity holds, and the backbones make three passes, not four."""
    import onnxruntime as ort

    from busdx.models.classification import ClassifierEnsemble

    torch.manual_seed(3)
    both = build_classifier(ClassifierSpec(arch="lite0", views=2), pretrained=False).eval()
    crop = build_classifier(ClassifierSpec(arch="lite0"), pretrained=False).eval()
    with torch.no_grad():
        both.fc.weight.normal_(0, 0.05)
        crop.fc.bias.fill_(-0.4)
    ensemble = ClassifierEnsemble([both, crop]).eval()
    assert ensemble.views == 2
    seen = []
    hook = crop.backbone.conv_stem.register_forward_hook(
        lambda m, i, o: seen.append(i[0].shape[0]))
    x = torch.rand(2, 2, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = (ExportWrapper(both)(x)[0] + ExportWrapper(crop)(x[:, :1])[0]) / 2
        ExportWrapper(ensemble)(x)
    hook.remove()
    assert seen[-1] == 2  # the crop network ran on the two crops, not on the whole images
    path = export_onnx(ensemble, tmp_path / "mixed.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logit, cam = session.run(None, {"image": x.numpy()})
    assert np.abs(logit - expected.numpy()).max() < ONNX_TOL
    assert np.abs(cam.mean(axis=(2, 3)) + ensemble.fc.bias.item() - logit).max() < ONNX_TOL
    with pytest.raises(BusdxError, match="flip_crop"):
        ExportWrapper(ensemble, tta="flip_crop")


def test_two_view_classifier_exports_with_an_exact_crop_cam(lite, tmp_path):
    import onnxruntime as ort

    from busdx.models.classification import normalise

    torch.manual_seed(2)
    model = build_classifier(ClassifierSpec(arch="lite0", views=2), pretrained=False).eval()
    assert model.fc.in_features == 2 * model.num_features
    path = export_onnx(model, tmp_path / "both.onnx", tta="flip")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == 2
    x = torch.rand(3, 2, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        direct = model(normalise(model, x))  # the training forward: views share the backbone
        plain, _ = ExportWrapper(model)(x)
        mirrored, _ = ExportWrapper(model)(torch.flip(x, dims=[3]))
    assert torch.allclose(plain, direct, atol=1e-5)
    logit, cam = session.run(None, {"image": x.numpy()})
    assert cam.shape == (3, 1, 7, 7)
    assert np.abs(logit - ((plain + mirrored) / 2).numpy()).max() < ONNX_TOL
    assert np.abs(cam.mean(axis=(2, 3)) + model.fc.bias.item() - logit).max() < ONNX_TOL
    _assert_whole_image_shifts_cam_by_a_constant(session, x, cam, seed=7)


def _assert_whole_image_shifts_cam_by_a_constant(session, x, cam, seed: int) -> None:
    """The map is the crop's: a new whole-image view (channel 1) moves it by a constant."""
    other = x.clone()
    other[:, 1] = torch.rand(x.shape[0], *x.shape[2:], generator=torch.Generator().manual_seed(seed))
    _, cam_other = session.run(None, {"image": other.numpy()})
    shift = cam_other - cam
    assert np.abs(shift - shift.mean(axis=(2, 3), keepdims=True)).max() < ONNX_TOL


def test_crop_only_mirror_is_the_mean_over_the_mirrored_crop_and_keeps_cam_exact(lite, tmp_path):
    """tta="flip_crop": the logit is the mean over (crop, whole) and (mirrored crop, whole) from
    three backbone passes, the CAM still sums to it and still moves only by a constant when the
    whole-image view changes."""
    import onnxruntime as ort

    torch.manual_seed(3)
    model = build_classifier(ClassifierSpec(arch="lite0", views=2), pretrained=False).eval()
    path = export_onnx(model, tmp_path / "flip_crop.onnx", tta="flip_crop")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 2, 224, 224, generator=torch.Generator().manual_seed(9))
    mirrored = x.clone()
    mirrored[:, 0] = torch.flip(x[:, 0], dims=[2])
    with torch.no_grad():
        expected = (ExportWrapper(model)(x)[0] + ExportWrapper(model)(mirrored)[0]) / 2
        logit, cam = ExportWrapper(model, tta="flip_crop")(x)
    assert torch.allclose(logit, expected, atol=1e-5)
    assert torch.allclose(cam.mean(dim=(2, 3)) + model.fc.bias, logit, atol=1e-5)
    onnx_logit, onnx_cam = session.run(None, {"image": x.numpy()})
    assert np.abs(onnx_logit - logit.numpy()).max() < ONNX_TOL
    assert np.abs(onnx_cam - cam.numpy()).max() < ONNX_TOL
    _assert_whole_image_shifts_cam_by_a_constant(session, x, onnx_cam, seed=10)
    with pytest.raises(Exception, match="two-view"):
        ExportWrapper(lite, tta="flip_crop")


@pytest.mark.parametrize("name", ["lite", "resnet"])
def test_onnx_export_matches_torch_and_cam_sums_to_logit(name, request, tmp_path):
    import onnxruntime as ort

    model = request.getfixturevalue(name)
    path = export_onnx(model, tmp_path / "classifier.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logit", "cam"]
    x = torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logit, cam = ExportWrapper(model)(x)
        direct = model((x.repeat(1, 3, 1, 1) - torch.tensor(model.mean).view(1, 3, 1, 1))
                       / torch.tensor(model.std).view(1, 3, 1, 1))
    onnx_logit, onnx_cam = session.run(None, {"image": x.numpy()})
    assert torch.allclose(logit, direct, atol=1e-5)
    assert onnx_logit.shape == (3, 1) and onnx_cam.shape == (3, 1, 7, 7)
    assert np.abs(onnx_logit - logit.numpy()).max() < ONNX_TOL
    assert np.abs(onnx_cam - cam.numpy()).max() < ONNX_TOL
    if isinstance(model, ResNet50Recipe):
        # the linearised head: logit = mean(cam) + c(x); c differs per image but the CAM's
        # direction is the gradient of the logit with respect to the pooled features
        pooled = model.pooled((x.repeat(1, 3, 1, 1) - torch.tensor(model.mean).view(1, 3, 1, 1))
                              / torch.tensor(model.std).view(1, 3, 1, 1)).detach().requires_grad_()
        model.head(pooled).sum().backward()
        w = ExportWrapper(model).direction(pooled.detach())
        assert torch.allclose(w, pooled.grad, atol=1e-5)
    else:
        bias = model.fc.bias.item()
        assert np.abs(onnx_cam.mean(axis=(2, 3)) + bias - onnx_logit).max() < ONNX_TOL


def test_logit_offset_is_folded_into_the_bias(lite, tmp_path):
    import onnxruntime as ort

    x = np.random.default_rng(4).random((2, 1, 224, 224), dtype=np.float32)
    plain = ort.InferenceSession(str(export_onnx(lite, tmp_path / "a.onnx")))
    shifted = ort.InferenceSession(str(export_onnx(lite, tmp_path / "b.onnx", logit_offset=-0.7)))
    (l0, _), (l1, c1) = plain.run(None, {"image": x}), shifted.run(None, {"image": x})
    assert np.abs(l1 - (l0 - 0.7)).max() < ONNX_TOL
    assert np.abs(c1.mean(axis=(2, 3)) + lite.fc.bias.item() - 0.7 - l1).max() < ONNX_TOL
    assert lite.fc.bias.item() == pytest.approx(plain.run(None, {"image": x})[0][0, 0]
                                                - plain.run(None, {"image": x})[1][0].mean(),
                                                abs=ONNX_TOL)  # the model itself is untouched


def test_auc_and_metrics_match_sklearn():
    from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(y * 0.8 + rng.normal(0, 0.7, 300), 1)  # rounded: many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr = roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk_roc(y, s, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    pred = s > 0.4
    m = binary_metrics(y, pred)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert (m.tp, m.fp, m.tn, m.fn) == (tp, fp, tn, fn)
    assert m.precision == pytest.approx(precision_score(y, pred))
    assert m.recall == pytest.approx(recall_score(y, pred))
    assert m.specificity == pytest.approx(tn / (tn + fp))
    assert m.accuracy == pytest.approx((tp + tn) / 300)


def test_agreement_statistics_match_scipy_and_sklearn():
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, 200)
    b = np.clip(a + rng.integers(-1, 2, 200), 0, 2)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert weighted_kappa(a, b, 3) == pytest.approx(cohen_kappa_score(a, b, weights="linear"))
    out = birads_agreement([0, 1, 2, 3, 4], [2, 4, 4, 4, 5])
    assert np.array(out["table"]["counts"]).sum() == 5
    assert out["exact_agreement_3level"] == pytest.approx(1.0)


def test_per_scanner_results_split_the_predictions():
    from busdx.evaluation.classification import Prediction, by_group

    def pred(label, prob):
        return Prediction("i", "p", label, 3, 0.0, prob)

    preds = [pred(1, 0.9), pred(0, 0.2), pred(1, 0.3), pred(0, 0.6), pred(0, 0.1), pred(0, 0.7)]
    out = by_group(preds, ["A", "A", "A", "A", "B", "B"], threshold=0.5)
    assert out["A"] == {"n": 4, "malignant": 2, "auc": 0.75, "sensitivity": 0.5,
                        "specificity": 0.5, "tp": 1, "fp": 1, "tn": 1, "fn": 1}
    # one class only: no AUC and no sensitivity, rather than a number that means nothing
    assert out["B"]["auc"] is None and out["B"]["sensitivity"] is None
    assert out["B"]["specificity"] == 0.5
    with pytest.raises(ValueError):
        by_group(preds, ["A"], 0.5)


def test_reader_comparison_pairs_the_model_with_the_birads_reading():
    from busdx.evaluation.classification import Prediction, reader_comparison, roc_auc

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 120)
    birads = np.where(labels == 1, rng.choice([3, 4, 5], 120), rng.choice([2, 3, 4], 120))
    probs = np.clip(0.5 * labels + rng.normal(0.25, 0.2, 120), 0, 1)
    preds = [Prediction(f"i{i}", f"p{i // 2}", int(y), int(b), 0.0, float(p))
             for i, (y, b, p) in enumerate(zip(labels, birads, probs, strict=True))]
    out = reader_comparison(preds, reps=200)
    assert out["n"] == 120
    assert out["model_auc"] == pytest.approx(roc_auc(labels, probs))
    assert out["birads_auc"] == pytest.approx(roc_auc(labels, birads))  # ties at midranks
    assert out["difference"] == pytest.approx(out["model_auc"] - out["birads_auc"])
    for key in ("model_auc", "birads_auc", "difference"):
        lo, hi = out[f"{key}_ci95"]
        assert lo <= out[key] <= hi
    # external sets may come without BI-RADS: no comparison rather than a wrong one
    preds[0].birads = 0
    assert reader_comparison(preds) is None
    assert reader_comparison([]) is None
    assert reader_comparison([p for p in preds[1:] if p.label == 1]) is None


def test_the_card_shows_the_reader_comparison_and_the_per_birads_table():
    from busdx.evaluation.card_markdown import _reader_lines

    assert _reader_lines({}) == []
    group = {"n": 10, "malignant": 4, "auc": 0.8, "sensitivity": 0.75, "specificity": 0.5,
             "tp": 3, "fp": 3, "tn": 3, "fn": 1}
    text = "\n".join(_reader_lines({
        "readers": {"n": 10, "model_auc": 0.91, "model_auc_ci95": [0.85, 0.95],
                    "birads_auc": 0.87, "birads_auc_ci95": [0.8, 0.92],
                    "difference": 0.04, "difference_ci95": [-0.01, 0.09]},
        "per_birads": {"BI-RADS 4": group}}))
    assert "AUC 0.870 (0.800-0.920) against the model's 0.910" in text
    assert "model minus BI-RADS +0.040 (-0.010 to +0.090;" in text
    assert "| BI-RADS 4 | 10 | 4 | 0.800 | 0.750 | 0.500 | 3 / 3 / 3 / 1 |" in text
    assert "not a reader study" in text


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(100), 2)
    y = np.repeat(rng.integers(0, 2, 100), 2)
    s = y + rng.normal(0, 1.0, 200)
    lo, hi = bootstrap_auc(y, s, patients.astype(str), reps=300, seed=0)
    assert lo < roc_auc(y, s) < hi
    assert lo > 0.5 and hi < 1.0

    from busdx.evaluation.classification import bootstrap_rates

    threshold = 0.5
    rates = bootstrap_rates(y, s, patients.astype(str), threshold, reps=300, seed=0)
    m = binary_metrics(y, s >= threshold)
    for name, value in (("sensitivity", m.recall), ("specificity", m.specificity)):
        low, high = rates[name]
        assert 0.0 <= low < value < high <= 1.0, name
    # the same resamples as the AUC's: the AUC interval is unchanged by the new statistics
    assert bootstrap_auc(y, s, patients.astype(str), reps=300, seed=0) == (lo, hi)


@pytest.mark.slow
def test_tiny_training_run_writes_checkpoint_card_and_evaluates(fixtures_root, tmp_path):
    """Train two tiny epochs on the fixtures, export, then evaluate from ONNX (GT masks and a
    random-init segmenter) through the CLI."""
    from busdx.cli.main import main
    from busdx.evaluation.model_card import update_card

    models = tmp_path / "models"
    rc = main(["train", "classification", "--data", str(fixtures_root), "--out",
               str(tmp_path / "run"), "--models", str(models), "--epochs", "2",
               "--max-batches", "1", "--batch-size", "4", "--cache", str(tmp_path / "cache"),
               "--test-fold", "1", "--seed", "1", "--split-seed", "0", "--augment", "strong"])
    assert rc == 0
    assert (tmp_path / "run" / "classifier.pt").is_file()
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    # the seed moves the initialisation and augmentation, the split seed the validation patients
    assert (record["config"]["seed"], record["config"]["split_seed"]) == (1, 0)
    assert record["config"]["augment"] == "strong"
    assert record["hardware"]["device"] == "cpu" and record["hardware"]["threads"] == 1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    card = load_card(models)["classifier"]
    for key in ("temperature", "threshold", "input", "crop"):
        assert key in card
    assert card["crop"] == {"size": 224, "context": 0.3, "contexts": [0.3]}

    rc = main(["evaluate", "classification", "--data", str(fixtures_root), "--models",
               str(models), "--masks", "gt", "--test-fold", "1", "--reps", "50",
               "--figures", str(tmp_path / "fig")])
    assert rc == 0
    card = load_card(models)["classifier"]
    gt = card["test_gt_masks"]
    assert gt["n"] == gt["tp"] + gt["fp"] + gt["tn"] + gt["fn"]
    # no end-to-end numbers yet: the headline says it is on ground-truth masks
    assert card["masks"] == "ground truth" and card["test"] == gt
    assert (tmp_path / "fig" / "classifier_roc.png").is_file()

    _export_random_segmenter(models / "segmenter.onnx")
    # a member selection recorded for other networks must not outlive them as the current one,
    # but stays on record among the earlier rounds
    update_card(models, "classifier",
                {"checkpoints": ["elsewhere/classifier.pt"], "member_selection": {"chosen": "x"},
                 "with_previous_segmenter": {"what": "comparisons of other networks"}})
    # the operating point refitted on validation through the exported models
    rc = main(["train", "classification", "--calibrate-only", "--data", str(fixtures_root),
               "--models", str(models), "--test-fold", "1", "--masks", "predicted",
               "--checkpoint", str(tmp_path / "run" / "classifier.pt"), "--seed", "0"])
    assert rc == 0
    card = load_card(models)["classifier"]
    assert card["calibration"]["masks"] == "predicted"
    assert card["calibration_training"]["engine"] == "torch"
    assert card["tta"] in ("none", "flip") and set(card["tta_comparison_val_auc"]) == {
        "none", "flip"}
    assert card["temperature"] == pytest.approx(1 / card["calibration"]["platt_a"])
    # results of the previous graph are stale: on file, but never shown as the new one's
    assert "test" not in card and "test_gt_masks" not in card
    assert "member_selection" not in card and "with_previous_segmenter" not in card
    from busdx.evaluation.evidence import load_record
    from busdx.release import load_release

    stale = load_record("classifier.member_selection", models / "evidence")
    assert stale.results == {"chosen": "x"} and stale.stale(load_release(models))
    rc = main(["evaluate", "classification", "--data", str(fixtures_root), "--models",
               str(models), "--test-fold", "1", "--reps", "50"])
    assert rc == 0
    card = load_card(models)["classifier"]
    assert card["masks"] == "predicted" and card["test"]["masks"] == "predicted"
    assert "test_gt_masks" not in card


@pytest.mark.slow
def test_two_view_run_calibrates_ships_and_analyses(fixtures_root, tmp_path):
    """A tiny crop + whole-image run: calibrated through the exported graph, written to the card
    as ``input: both``, and used by the product's pipeline."""
    from busdx.cli.main import main
    from busdx.inference import Models, analyze

    models = tmp_path / "models"
    common = ["--data", str(fixtures_root), "--models", str(models), "--test-fold", "1"]
    rc = main(["train", "classification", *common, "--out", str(tmp_path / "both"),
               "--input", "both", "--epochs", "1", "--max-batches", "1", "--batch-size", "4",
               "--cache", str(tmp_path / "cache")])
    assert rc == 0
    _export_random_segmenter(models / "segmenter.onnx")
    rc = main(["train", "classification", "--calibrate-only", *common, "--tta", "auto",
               "--max-passes", "2", "--checkpoint", str(tmp_path / "both" / "classifier.pt")])
    assert rc == 0
    card = load_card(models)["classifier"]
    # mirror averaging takes 4 passes, the crop's mirror alone 3: over the budget, never chosen
    assert card["input"] == "both" and card["tta"] == "none"
    assert card["candidates"]["both"]["passes_per_crop"] == 2
    assert set(card["crop_comparison_val_auc"]) == {"model=both, tta=none, contexts=0.3",
                                                    "model=both, tta=flip, contexts=0.3",
                                                    "model=both, tta=flip_crop, contexts=0.3"}
    loaded = Models.load(models)
    assert loaded.settings.views == 2
    image = next(fixtures_root.rglob("Images/*.png"))
    result = analyze(image, loaded, render_overlays=False)
    assert 0.0 <= result.probability <= 1.0 and result.heatmap.shape == result.image.shape


def _export_random_segmenter(path):
    """A random-init stand-in for models/segmenter.onnx with the contract's names."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, image):
            return self.conv(image) + 5.0 * (image - 0.3)

    torch.onnx.export(Tiny(), (torch.rand(1, 1, 224, 224),), str(path), input_names=["image"],
                      output_names=["mask_logits"], dynamic_axes={"image": {0: "n"}},
                      opset_version=17, dynamo=False)
    from busdx.evaluation.model_card import update_card

    update_card(path.parent, "segmenter", {"file": path.name})  # the release names it


def test_resnet50_recipe_trains_a_few_batches():
    """The original recipe trains (random init here: no internet) and its loss moves."""
    torch.manual_seed(0)
    model = build_classifier(ClassifierSpec(arch="resnet50", weights="none")).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, 1e-3)
    x = torch.rand(4, 3, 64, 64)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    frozen_before = model.backbone.conv1.weight.clone()
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(model.backbone.conv1.weight, frozen_before)


def test_a_classifier_is_recovered_from_its_graph(tmp_path):
    """`busdx export classification --recover`: the network rebuilt from an exported two-view
    graph (batch norms folded, Platt offset taken back out of the bias) exports to the same
    outputs, so calibration and export can run without the lost checkpoint."""
    import onnxruntime as ort

    from busdx.cli.main import main
    from busdx.training.classification import load_checkpoint
    from stand_in_models import as_if_trained

    torch.manual_seed(4)
    model = as_if_trained(build_classifier(ClassifierSpec(arch="lite0", views=2),
                                           pretrained=False)).eval()
    models = tmp_path / "models"
    graph = export_onnx(model, models / "classifier.onnx", logit_offset=-0.7)
    section = {"file": "classifier.onnx", "arch": "lite0", "input": "both", "tta": "none",
               "logit_offset": -0.7, "training": {"config": {"size": 224, "input": "both"}},
               "calibration_training": {"val_auc": 0.9, "engine": "torch"}}
    write_card(models, {"classifier": section})
    out = tmp_path / "run" / "classifier.pt"
    assert main(["export", "classification", "--output", str(graph), "--recover", str(out)]) == 0
    recovered, ckpt = load_checkpoint(out)
    assert ckpt["recovered_from"]["max_abs_diff"] < ONNX_TOL
    assert json.loads((out.parent / "calibration.json").read_text()) == {"val_auc": 0.9}
    x = torch.rand(3, 2, 224, 224, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected, expected_cam = ExportWrapper(model)(x)
        got, got_cam = ExportWrapper(recovered)(x)
    assert torch.allclose(got, expected, atol=ONNX_TOL)  # the network's own logit, no offset
    assert torch.allclose(got_cam, expected_cam, atol=ONNX_TOL)
    again = export_onnx(recovered, tmp_path / "again.onnx", logit_offset=-0.7)
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
               .run(None, {"image": x.numpy()}) for p in (graph, again)]
    for a, b in zip(*outputs, strict=True):
        assert np.abs(a - b).max() < ONNX_TOL

    section["arch"] = "resnet50"
    write_card(models, {"classifier": section})
    assert main(["export", "classification", "--output", str(graph), "--recover", str(out)]) == 2
    assert main(["export", "classification", "--output", str(tmp_path / "none.onnx"),
                 "--recover", str(out)]) == 2


def test_a_recovered_classifier_can_be_fine_tuned_from(tmp_path):
    """`--init`: a checkpoint rebuilt from a graph (batch norms folded) is loaded and its norms
    get statistics again, which leaves what it computes in eval mode unchanged but makes
    training mode normalise by real statistics; another network's checkpoint is refused."""
    from busdx.cli.main import main
    from busdx.models.classification import normalise
    from busdx.training.classification import initialise, read_init
    from stand_in_models import as_if_trained

    torch.manual_seed(5)
    model = as_if_trained(build_classifier(ClassifierSpec(arch="lite0", views=2),
                                           pretrained=False)).eval()
    models = tmp_path / "models"
    graph = export_onnx(model, models / "classifier.onnx")
    write_card(models, {"classifier": {
        "file": "classifier.onnx", "arch": "lite0", "input": "both", "tta": "none",
        "training": {"config": {"size": 224, "input": "both"}}}})
    out = tmp_path / "run" / "classifier.pt"
    assert main(["export", "classification", "--output", str(graph), "--recover", str(out)]) == 0

    inputs = [(torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(i)), 0)
              for i in range(20)]
    spec = ClassifierSpec(arch="lite0", views=2)
    student = build_classifier(spec, pretrained=False)
    initialise(student, read_init(out, spec), inputs)
    x = torch.stack([inputs[i][0] for i in range(4)])
    with torch.no_grad():
        np.testing.assert_allclose(student.eval()(normalise(student, x)).numpy(),
                                   model(normalise(model, x)).numpy(), atol=1e-4)
    norm = next(m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var), atol=0.01)

    with pytest.raises(BusdxError, match="--arch and --input"):
        read_init(out, ClassifierSpec(arch="lite0", views=1))
    with pytest.raises(BusdxError, match="no such checkpoint"):
        read_init(tmp_path / "missing.pt", spec)


def test_recovery_reads_a_shipped_releases_networks_from_its_made_of_line(tmp_path):
    """A shipped release keeps which networks its classifier graph holds, and its mirror
    option, only in release.json's made_of line: `--recover` must read them there."""
    import shutil
    from pathlib import Path

    from busdx.cli.classification import _made_of

    shutil.copy(Path(__file__).resolve().parents[1] / "models" / "release.json", tmp_path)
    made_of = json.loads((tmp_path / "release.json").read_text())["classifier"]["made_of"]
    got = _made_of(tmp_path)
    assert got["arch"] in made_of and made_of.endswith(f"mirror averaging: {got['tta']}")
    assert bool(got["ensemble"]) == ("+" in got["arch"])
    assert _made_of(tmp_path / "nowhere") == {}
    # the line's writer and reader live side by side: what one writes, the other reads back
    from busdx.evaluation.model_card import classifier_made_of, classifier_made_of_parts

    for ensemble, arch, tta in (("2 classifiers", "lite1+lite2", "flip"),
                                (None, "lite1", "flip_crop")):
        parts = classifier_made_of_parts(classifier_made_of(ensemble, arch, tta))
        assert (parts["arch"], parts["tta"], bool(parts["ensemble"])) == (arch, tta,
                                                                         bool(ensemble))
    assert classifier_made_of_parts("U-Net, 2 networks") == {}


@pytest.mark.slow
def test_worker_processes_change_speed_not_batches(fixtures_root, tmp_path):
    """Training with 2 loader processes follows the same batches (same losses) as in-process."""
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.training import classification as tc

    split = make_split(load_index(fixtures_root), SplitConfig(test_fold=1))
    train = tc.load_samples(split.train, tmp_path / "cache")
    val = tc.load_samples(split.val, tmp_path / "cache")
    histories = []
    for workers in (0, 2):
        config = tc.ClassifierTrainConfig(arch="lite0", epochs=2, max_batches=2, batch_size=4,
                                          workers=workers, device="cpu")
        result = tc.train_classifier(train, val, config, tmp_path / f"w{workers}")
        histories.append([h["train_loss"] for h in result.history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


def test_float16_storage_halves_the_file_and_keeps_the_output(lite, tmp_path):
    import onnxruntime as ort

    from busdx.models.storage import store_weights, stored_weights, weight_storage

    full = export_onnx(lite, tmp_path / "full.onnx")
    half = export_onnx(lite, tmp_path / "half.onnx", storage="float16")
    assert (weight_storage(full), weight_storage(half)) == ("float32", "float16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(7)).numpy()
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})
               for p in (full, half)]
    # weights rounded to float16 (relative 2**-11), computed in float32
    assert np.abs(outputs[0][0] - outputs[1][0]).max() < 0.02
    import onnx

    weights = stored_weights(onnx.load(str(half)))
    assert weights["model.fc.weight"].dtype == np.float32
    assert np.allclose(weights["model.fc.weight"], lite.fc.weight.detach().numpy(), atol=1e-3)
    # float32 storage undoes it: the same weights back as initializers, no casts left
    back = store_weights(half, "float32")
    proto = onnx.load(str(back))
    assert weight_storage(back) == "float32"
    assert not any(n.op_type == "Cast" and n.input[0] in weights for n in proto.graph.node)
    assert np.array_equal(stored_weights(proto)["model.fc.weight"], weights["model.fc.weight"])
    again = ort.InferenceSession(str(back), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    assert np.abs(again[0] - outputs[1][0]).max() < 1e-5


def test_weight_average_follows_its_decay_and_copies_counters():
    from busdx.training.classification import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    avg = WeightAverage(model, decay=0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(4.0)
        model[1].running_mean.fill_(8.0)
        model[1].num_batches_tracked.fill_(3)
    avg.update(model)
    got = avg.model.state_dict()
    assert torch.allclose(got["0.weight"], start["0.weight"] + 1.0)  # a quarter of the step
    assert torch.allclose(got["1.running_mean"], torch.full((1,), 2.0))
    assert int(got["1.num_batches_tracked"]) == 3
    assert not any(p.requires_grad for p in avg.model.parameters())


@pytest.mark.slow
def test_weight_averaged_run_validates_and_saves_the_average(fixtures_root, tmp_path):
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.training import classification as tc

    split = make_split(load_index(fixtures_root), SplitConfig(test_fold=1))
    train = tc.load_samples(split.train, tmp_path / "cache")
    val = tc.load_samples(split.val, tmp_path / "cache")
    config = tc.ClassifierTrainConfig(arch="lite0", epochs=2, max_batches=2, batch_size=4,
                                      ema=0.9, device="cpu")
    result = tc.train_classifier(train, val, config, tmp_path / "ema")
    model, ckpt = tc.load_checkpoint(result.checkpoint)
    assert ckpt["config"]["ema"] == 0.9
    val_loader = torch.utils.data.DataLoader(tc.CropDataset(val, config, train=False), batch_size=8)
    logits, labels = tc.predict_logits(model, val_loader)
    # the saved weights are the ones validated: their AUC is the run's best
    assert tc.roc_auc(labels, logits) == pytest.approx(result.best_val_auc, abs=1e-6)
    with pytest.raises(ValueError, match="ema"):
        tc.train_classifier(train, val, tc.ClassifierTrainConfig(ema=1.0), tmp_path / "bad")


def test_recorded_configs_keep_their_augmentation_preset():
    from busdx.training.classification import ClassifierTrainConfig, recorded_config

    assert ClassifierTrainConfig.from_record({"arch": "lite1", "augment": "strong"}).augment == (
        "strong")
    # before presets a checkpoint kept every setting, all the defaults then
    old = {"arch": "lite1", "augment": {"rotate_deg": 15.0}, "seed": 3}
    assert ClassifierTrainConfig.from_record(old).augment == "default"
    assert recorded_config(old) == {"arch": "lite1", "seed": 3}
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        ClassifierTrainConfig(augment="extreme")


def test_a_bad_weight_average_decay_is_refused_before_any_work(tmp_path):
    from busdx.cli.main import main

    assert main(["train", "classification", "--data", str(tmp_path), "--ema", "1.5",
                 "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_a_cross_validation_run_records_its_fold_and_is_calibrated_only_on_it(fixtures_root,
                                                                               tmp_path):
    """`--val-fold K` validates on the whole official fold K; --calibrate-only refuses to fit an
    operating point on another split than the network's own validation set."""
    from busdx.cli.main import main

    run = tmp_path / "run"
    common = ["--data", str(fixtures_root), "--cache", str(tmp_path / "cache")]
    assert main(["train", "classification", *common, "--out", str(run), "--epochs", "1",
                 "--max-batches", "1", "--batch-size", "4", "--val-fold", "2",
                 "--no-export"]) == 0
    record = json.loads((run / "training.json").read_text())
    assert record["config"]["val_fold"] == 2 and record["n_val"] == 4
    models = tmp_path / "models"
    models.mkdir()
    for other in (["--val-fold", "3"], []):
        assert main(["train", "classification", "--calibrate-only", *common, "--models",
                     str(models), "--checkpoint", str(run / "classifier.pt"), *other]) == 2
    assert not (models / "classifier.onnx").exists()
    assert main(["train", "classification", *common, "--out", str(tmp_path / "bad"),
                 "--val-fold", "5"]) == 2
    assert not (tmp_path / "bad").exists()


def test_auxiliary_targets_group_histology_by_the_biopsy_label():
    from busdx.training.classification import (
        BIRADS_CATEGORIES,
        HISTOLOGY_GROUPS,
        auxiliary_targets,
        histology_group,
    )

    assert HISTOLOGY_GROUPS[histology_group("Fibroadenoma ", 0)] == "fibroadenoma"
    assert HISTOLOGY_GROUPS[histology_group("invasive ductal carcinoma", 1)] == (
        "invasive ductal carcinoma")
    assert HISTOLOGY_GROUPS[histology_group("phyllodes tumor", 0)] == "other benign"
    assert HISTOLOGY_GROUPS[histology_group("phyllodes tumor", 1)] == "other malignant"
    # the pathology column decides the class: a benign-group name on a malignant row is "other"
    assert HISTOLOGY_GROUPS[histology_group("cyst", 1)] == "other malignant"

    class R:
        def __init__(self, histology, pathology, birads):
            self.id, self.histology, self.birads = "x", histology, birads
            self.label = int(pathology == "malignant")

    targets = auxiliary_targets([R("cyst", "benign", 2), R("lymphoma", "malignant", 5)])
    assert targets.tolist() == [[HISTOLOGY_GROUPS.index("cyst"), 0],
                                [HISTOLOGY_GROUPS.index("other malignant"), 3]]
    assert BIRADS_CATEGORIES == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="BI-RADS 6"):
        auxiliary_targets([R("cyst", "benign", 6)])


@pytest.mark.slow
def test_auxiliary_losses_train_but_leave_the_checkpoint_as_a_plain_run(fixtures_root, tmp_path):
    """--aux-weight changes what the network learns, not what it is: the checkpoint holds the
    same tensors as a plain run's and exports alike."""
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.training import classification as tc

    split = make_split(load_index(fixtures_root), SplitConfig(test_fold=1))
    train = tc.load_samples(split.train, tmp_path / "cache")
    val = tc.load_samples(split.val, tmp_path / "cache")
    aux = tc.auxiliary_targets(split.train)
    runs = {}
    for weight in (0.0, 0.5):
        config = tc.ClassifierTrainConfig(arch="lite0", epochs=1, max_batches=2, batch_size=4,
                                          device="cpu", aux_weight=weight)
        result = tc.train_classifier(train, val, config, tmp_path / f"aux{weight}", aux=aux)
        runs[weight] = (result, torch.load(result.checkpoint, weights_only=False))
    plain, auxed = runs[0.0][1], runs[0.5][1]
    assert plain["state_dict"].keys() == auxed["state_dict"].keys()
    assert auxed["config"]["aux_weight"] == 0.5
    # the auxiliary cross-entropies add to the training loss
    assert runs[0.5][0].history[0]["train_loss"] > runs[0.0][0].history[0]["train_loss"]
    with pytest.raises(ValueError, match="auxiliary targets"):
        tc.train_classifier(train, val, tc.ClassifierTrainConfig(aux_weight=0.5), tmp_path / "x")
    with pytest.raises(ValueError, match="aux-weight"):
        tc.ClassifierTrainConfig(aux_weight=-1)


def test_the_members_of_an_ensemble_graph_are_recovered(tmp_path):
    """`--recover` on an ensemble graph (a two-view network and a crop network, mirror averaged,
    Platt offset folded in): one checkpoint per member, each member's logit the network's own up
    to the shared mean bias, and the members averaged again compute the graph."""
    import onnxruntime as ort

    from busdx.cli.main import main
    from busdx.models.classification import ClassifierEnsemble, export_module
    from busdx.training.classification import load_checkpoint
    from stand_in_models import as_if_trained

    torch.manual_seed(5)
    both = as_if_trained(build_classifier(ClassifierSpec(arch="lite0", views=2),
                                          pretrained=False)).eval()
    crop = as_if_trained(build_classifier(ClassifierSpec(arch="lite0"), pretrained=False)).eval()
    models = tmp_path / "models"
    graph = export_onnx(ClassifierEnsemble([both, crop]), models / "classifier.onnx",
                        tta="flip", logit_offset=-0.4)
    members = [{"arch": "lite0", "config": {"input": "both", "size": 224}, "epoch": 3},
               {"arch": "lite0", "config": {"input": "crop", "size": 224}, "epoch": 5}]
    write_card(models, {"classifier": {"file": "classifier.onnx", "arch": "lite0",
                                       "input": "both", "tta": "flip", "logit_offset": -0.4,
                                       "ensemble": "2 classifiers", "members": members}})
    out = tmp_path / "run" / "classifier.pt"
    assert main(["export", "classification", "--out", str(graph), "--recover", str(out)]) == 0
    got_both, ckpt = load_checkpoint(tmp_path / "run" / "lite0_both" / "classifier.pt")
    got_crop, _ = load_checkpoint(tmp_path / "run" / "lite0_crop" / "classifier.pt")
    assert ckpt["epoch"] == 3 and ckpt["config"]["input"] == "both"
    x = torch.rand(2, 2, 224, 224, generator=torch.Generator().manual_seed(9))
    mean_bias = (both.fc.bias + crop.fc.bias) / 2
    with torch.no_grad():
        for original, recovered, views in ((both, got_both, x), (crop, got_crop, x[:, :1])):
            want = ExportWrapper(original)(views)[0] - original.fc.bias + mean_bias
            assert torch.allclose(ExportWrapper(recovered)(views)[0], want, atol=ONNX_TOL)
        again = export_module(ClassifierEnsemble([got_both, got_crop]), tta="flip",
                              logit_offset=-0.4)(x)
    expected = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()})
    for a, b in zip(again, expected, strict=True):
        assert np.abs(a.numpy() - b).max() < ONNX_TOL


def _mean_logit_graph(path, views: int = 2, size: int | None = None, scale: float = 4.0):
    """A stand-in teacher: logit = scale * (mean of the input - 0.5), for [n, views, H, W]."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["n", views, size or "h", size or "w"]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["m", "half"], ["c"]),
        helper.make_node("Mul", ["c", "scale"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "axis"], ["logit"]),
    ]
    graph = helper.make_graph(
        nodes, "teacher", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n", 1])],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
                     helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
                     helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_teacher_graph_gives_its_output_and_refuses_what_it_cannot_teach(tmp_path):
    from busdx.training.distill import Teacher, soft_target_loss

    graph = _mean_logit_graph(tmp_path / "teacher.onnx", views=2, size=32)
    teacher = Teacher(graph, "logit")
    x = torch.rand(3, 2, 32, 32)
    expected = 4.0 * (x.mean(dim=(1, 2, 3)) - 0.5)
    assert torch.allclose(teacher(x).squeeze(1), expected, atol=1e-5)
    teacher.check_input(2, 32)
    with pytest.raises(BusdxError, match="2 view.s. per image and the network in training 1"):
        teacher.check_input(1, 32)
    with pytest.raises(BusdxError, match="32x32"):
        teacher.check_input(2, 224)
    with pytest.raises(BusdxError, match="no output 'mask_logits'"):
        Teacher(graph, "mask_logits")
    with pytest.raises(BusdxError, match="no such graph"):
        Teacher(tmp_path / "absent.onnx", "logit")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(BusdxError, match="not a graph ONNX Runtime can load"):
        Teacher(tmp_path / "junk.onnx", "logit")

    # the soft-target loss is smallest, with no gradient, where the student agrees
    taught = torch.tensor([[-2.0], [0.5], [3.0]])
    student = taught.squeeze(1).clone().requires_grad_(True)
    soft_target_loss(student, taught).backward()
    assert torch.allclose(student.grad, torch.zeros(3), atol=1e-7)
    import hashlib
    import json as _json

    (tmp_path / "release.json").write_text(_json.dumps({"version": "abc123"}))
    described = teacher.describe()
    assert described["release"] == "abc123" and described["output"] == "logit"
    assert described["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    assert float(soft_target_loss(taught.squeeze(1) + 1.0, taught)) > float(
        soft_target_loss(taught.squeeze(1), taught))


@pytest.mark.slow
def test_a_taught_run_learns_from_the_teacher_and_records_it(fixtures_root, tmp_path):
    """--teacher adds the teacher's probability to what the network learns; the run records
    which graph taught it and with what weight, and a teacher that cannot read the batches is
    refused before the run starts."""
    import hashlib

    from busdx.cli.main import main
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.training import classification as tc

    split = make_split(load_index(fixtures_root), SplitConfig(test_fold=1))
    train = tc.load_samples(split.train, tmp_path / "cache")
    val = tc.load_samples(split.val, tmp_path / "cache")
    graph = _mean_logit_graph(tmp_path / "teacher.onnx", views=2, scale=40.0)
    losses = {}
    for weight in (0.0, 1.0):
        config = tc.ClassifierTrainConfig(arch="lite0", input="both", epochs=1, max_batches=2,
                                          batch_size=4, device="cpu", teacher=str(graph),
                                          teacher_weight=weight)
        result = tc.train_classifier(train, val, config, tmp_path / f"taught{weight}")
        losses[weight] = result.history[0]["train_loss"]
        ckpt = torch.load(result.checkpoint, weights_only=False)
        assert ckpt["config"]["teacher"] == str(graph)
        assert ckpt["config"]["teacher_weight"] == weight
    # a weight of 1 drops the labels: the loss is the (different) one against the teacher
    assert losses[0.0] != pytest.approx(losses[1.0], rel=1e-3)

    # the command line's run keeps which graph taught it beside the checkpoint
    cli = tmp_path / "cli"
    assert main(["train", "classification", "--data", str(fixtures_root), "--out", str(cli),
                 "--input", "both", "--teacher", str(graph), "--cache", str(tmp_path / "cache"),
                 "--epochs", "1", "--max-batches", "1", "--batch-size", "4"]) == 0
    recorded = json.loads((cli / "training.json").read_text())["teacher"]
    assert recorded["graph"] == str(graph) and recorded["output"] == "logit"
    assert recorded["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()

    crop_only = tmp_path / "crop_only"
    assert main(["train", "classification", "--data", str(fixtures_root), "--out",
                 str(crop_only), "--input", "crop", "--teacher", str(graph),
                 "--cache", str(tmp_path / "cache"), "--epochs", "1"]) == 2
    # refused before the data is read: not even an empty run folder is left behind
    assert not crop_only.exists()
    no_start = tmp_path / "no_start"
    assert main(["train", "classification", "--data", str(fixtures_root), "--out",
                 str(no_start), "--input", "both", "--init", str(tmp_path / "missing.pt"),
                 "--cache", str(tmp_path / "cache"), "--epochs", "1"]) == 2
    assert not no_start.exists()
    with pytest.raises(ValueError, match="teacher-weight"):
        tc.ClassifierTrainConfig(teacher_weight=1.5)
