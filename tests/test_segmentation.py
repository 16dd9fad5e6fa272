"""Segmentation: training loop (history, checkpoints, resume, seeding), ONNX export against torch,
and the ONNX-only evaluation that writes the model card, all on the small fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

from busdx.cli.main import main  # noqa: E402
from busdx.data.augment import Augmenter  # noqa: E402
from busdx.errors import BusdxError  # noqa: E402
from busdx.evaluation.model_card import load_card  # noqa: E402
from busdx.models.contract import INPUT_NAME, SEGMENTER_OUTPUT  # noqa: E402
from busdx.models.segmentation import (  # noqa: E402
    PlainUNet,
    SegmenterConfig,
    build_segmenter,
    export_onnx,
    onnx_max_difference,
)
from busdx.training.loop import warmup_cosine  # noqa: E402
from busdx.training.segmentation import (  # noqa: E402
    SegTrainConfig,
    epoch_batches,
    segmentation_loss,
    train_segmenter,
)

# ONNX Runtime and torch compute the same graph with different kernels: logits agree to
# about 1e-4 in float32; 1e-3 is the stated tolerance.
ONNX_TOLERANCE = 1e-3


def _config(fixtures_root: Path, out: Path, **kw) -> SegTrainConfig:
    base = dict(data=str(fixtures_root), out=str(out), epochs=1, batch_size=4, limit_train=8,
                threads=1, cache_dir=str(out.parent / "cache"), warmup_steps=1,
                model=SegmenterConfig(pretrained=False))
    base.update(kw)
    return SegTrainConfig(**base)


@pytest.fixture(scope="module")
def trained_run(fixtures_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "run"
    assert main(["train", "segmentation", "--data", str(fixtures_root), "--out", str(out),
                 "--epochs", "1", "--batch-size", "4", "--limit-train", "8", "--threads", "1",
                 "--no-pretrained", "--cache-dir", str(out.parent / "cache"),
                 "--note", "fixture images only"]) == 0
    return out


@pytest.mark.slow
def test_training_writes_history_checkpoints_and_figure(trained_run):
    history = json.loads((trained_run / "history.json").read_text())
    assert history["epoch"] == [1]
    for key in ("train_loss", "val_loss", "val_dice"):
        assert len(history[key]) == 1 and np.isfinite(history[key][0])
    assert 0.0 <= history["val_dice"][0] <= 1.0
    assert (trained_run / "best.pt").is_file() and (trained_run / "last.pt").is_file()
    assert (trained_run / "learning_curves.png").stat().st_size > 1000
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["hardware"]["threads"] == 1
    assert summary["command"].startswith("busdx ")
    assert summary["note"] == "fixture images only"


@pytest.mark.slow
def test_training_is_seeded_and_resumable(fixtures_root, tmp_path):
    first = train_segmenter(_config(fixtures_root, tmp_path / "a"))
    again = train_segmenter(_config(fixtures_root, tmp_path / "b"))
    h1 = json.loads((first.out / "history.json").read_text())
    h2 = json.loads((again.out / "history.json").read_text())
    assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-4)

    # a run cut short by its time budget goes on to the end of its recipe when resumed
    cut = train_segmenter(_config(fixtures_root, tmp_path / "c", epochs=2, size=64, max_minutes=1e-9))
    assert cut.stopped == "time_budget" and cut.epochs_run == 1
    resumed = train_segmenter(_config(fixtures_root, tmp_path / "c", epochs=2, size=64, resume=True))
    history = json.loads((resumed.out / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert history["train_loss"][0] == cut.history["train_loss"][0]  # epoch 1 kept, not re-run
    assert resumed.epochs_run == 2 and resumed.stopped == "epochs"
    summary = json.loads((resumed.out / "summary.json").read_text())
    assert len(summary["commands"]) == 2  # the first run's command and the resumed one
    # another recipe would make a run that no config describes: refused, naming the setting
    with pytest.raises(BusdxError, match="epochs=2"):
        train_segmenter(_config(fixtures_root, tmp_path / "c", epochs=3, size=64, resume=True))


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_run(fixtures_root, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((10, 32, 32)).astype(np.float16)
    masks = (rng.random((10, 32, 32)) > 0.5).astype(np.uint8)
    order = rng.permutation(10)
    args = (images, masks, order, 4, 2, Augmenter(), 3, 1)
    inline = list(epoch_batches(*args, workers=0))
    parallel = list(epoch_batches(*args, workers=2))
    assert len(inline) == len(parallel) == 2
    for (x0, y0), (x1, y1) in zip(inline, parallel, strict=True):
        assert x0.shape == (4, 1, 32, 32) and torch.equal(x0, x1) and torch.equal(y0, y1)

    first = train_segmenter(_config(fixtures_root, tmp_path / "inline"))
    second = train_segmenter(_config(fixtures_root, tmp_path / "workers", workers=2))
    h1 = json.loads((first.out / "history.json").read_text())
    h2 = json.loads((second.out / "history.json").read_text())
    assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-4)


def test_losses_and_schedule():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 20  # confident and right
    bad = -good
    for kind in ("dice", "dice_bce"):
        assert float(segmentation_loss(good, target, kind)) < 0.05
        assert float(segmentation_loss(bad, target, kind)) > 0.9
    # warm-up, then cosine over the planned steps (see also tests/test_training_loop.py)
    assert warmup_cosine(0, 1000, 10) == pytest.approx(0.1)
    assert warmup_cosine(100, 1000, 10) == pytest.approx(0.5 * (1 + np.cos(np.pi / 10)))
    assert warmup_cosine(1000, 1000, 10) == pytest.approx(0.0)


def test_plain_unet_shapes():
    net = build_segmenter(SegmenterConfig(architecture="plain_unet", plain_width=4)).eval()
    assert isinstance(net, PlainUNet)
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def test_onnx_matches_torch_with_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = build_segmenter(SegmenterConfig(pretrained=False)).eval()
    path = tmp_path / "segmenter.onnx"
    export_onnx(net, path)
    for batch in (1, 3):
        images = torch.rand(batch, 1, 224, 224, generator=torch.Generator().manual_seed(batch))
        assert onnx_max_difference(net, path, images) < ONNX_TOLERANCE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out, features) = session.get_inputs(), session.get_outputs()
    assert inp.name == INPUT_NAME and out.name == SEGMENTER_OUTPUT
    assert inp.shape[1:] == [1, 224, 224] and not isinstance(inp.shape[0], int)
    # the encoder's features, pooled per stage: what the appearance check is fitted on
    assert features.name == "features" and features.shape[1] == 16 + 24 + 40 + 112 + 320
    assert path.stat().st_size < 20e6

    tta = tmp_path / "segmenter_tta.onnx"
    export_onnx(net, tta, hflip_tta=True)
    images = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(7))
    assert onnx_max_difference(net, tta, images, hflip_tta=True) < ONNX_TOLERANCE


@pytest.mark.slow
def test_export_and_evaluate_write_the_card(trained_run, fixtures_root, tmp_path):
    model = tmp_path / "segmenter.onnx"
    card = tmp_path / "model_card.json"
    assert main(["export", "segmentation", "--checkpoint", str(trained_run / "best.pt"),
                 "--out", str(model), "--card", str(card),
                 "--compare-runs", str(trained_run),
                 "--compare-architectures", str(trained_run)]) == 0
    assert main(["evaluate", "segmentation", "--data", str(fixtures_root), "--model", str(model),
                 "--card", str(card), "--figures", str(tmp_path / "fig")]) == 0
    section = load_card(card)["segmenter"]
    assert section["onnx_vs_torch_max_abs_diff"] < ONNX_TOLERANCE
    assert section["training"]["epochs_run"] == 1 and section["training"]["loss"] == "dice_bce"
    assert section["training"]["note"] == "fixture images only"  # the run's note reaches the card
    assert section["loss_comparison"]["chosen_by_validation"] == "dice_bce"
    assert section["architecture_comparison"]["chosen_by_validation"] == "lite_unet"
    test = section["test"]
    assert test["test_fold"] == 5 and test["test_images"] == 4  # fold 5 of the fixtures
    assert 0.0 <= test["dice"]["mean"] <= 1.0 and test["dice"]["n"] == 4
    assert sum(v["n"] for v in test["dice_per_scanner"].values()) == 4
    assert (tmp_path / "fig" / "segmentation_examples.png").stat().st_size > 1000
    rows = (tmp_path / "fig" / "segmentation_per_image.csv").read_text().splitlines()
    assert len(rows) == 5

    assert main(["evaluate", "segmentation", "--data", str(fixtures_root), "--model", str(model),
                 "--card", str(card), "--split", "val"]) == 0
    card_now = load_card(card)["segmenter"]
    assert card_now["validation"]["split"] == "val" and card_now["validation"]["images"] >= 1
    assert card_now["test"] == test  # the test results are left alone
    # a graph trained with --val-fold 2 is scored on the whole of fold 2, and says so
    from busdx.data.index import load_index

    fold2 = sum(1 for r in load_index(fixtures_root).records if r.fold == 2)
    assert main(["evaluate", "segmentation", "--data", str(fixtures_root), "--model", str(model),
                 "--card", str(card), "--split", "val", "--val-fold", "2"]) == 0
    validation = load_card(card)["segmenter"]["validation"]
    assert validation["images"] == fold2
    assert "official fold 2" in validation["validation_split"]


def test_evaluate_without_model_is_a_user_error(fixtures_root, tmp_path):
    assert main(["evaluate", "segmentation", "--data", str(fixtures_root),
                 "--model", str(tmp_path / "missing.onnx"), "--card", ""]) == 2


@pytest.mark.slow
def test_two_checkpoints_export_as_one_logit_averaging_graph(trained_run, tmp_path):
    """`busdx export segmentation --checkpoint A B`: one ONNX graph whose logits are the mean of
    the two networks', and a card listing both members."""
    ort = pytest.importorskip("onnxruntime")
    from busdx.models.segmentation import SegmenterExport, load_segmenter_checkpoint

    state = torch.load(trained_run / "best.pt", map_location="cpu", weights_only=False)
    with torch.no_grad():
        for tensor in state["model"].values():
            if tensor.is_floating_point():
                tensor.mul_(0.5)  # a second member with different weights
    other = tmp_path / "other" / "best.pt"
    other.parent.mkdir()
    torch.save(state, other)
    model, card = tmp_path / "ensemble.onnx", tmp_path / "model_card.json"
    stale = tmp_path / "segmenter_history_lite2.json"  # a network of an earlier graph
    stale.write_text("{}")
    assert main(["export", "segmentation", "--checkpoint", str(trained_run / "best.pt"),
                 str(other), "--out", str(model), "--card", str(card)]) == 0
    section = load_card(card)["segmenter"]
    assert section["ensemble"].startswith("2 networks") and len(section["members"]) == 2
    # the report's learning curves follow the graph: the first member's run history is beside
    # it (the second has none), the earlier network's is gone
    histories = sorted(p.name for p in tmp_path.glob("segmenter_history*.json"))
    assert histories == ["segmenter_history_lite0.json"]
    assert (json.loads((tmp_path / histories[0]).read_text())
            == json.loads((trained_run / "history.json").read_text()))
    assert section["onnx_vs_torch_max_abs_diff"] < ONNX_TOLERANCE

    images = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = np.mean([SegmenterExport(load_segmenter_checkpoint(p)[0]).eval()(images).numpy()
                            for p in (trained_run / "best.pt", other)], axis=0)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (got,) = session.run([SEGMENTER_OUTPUT], {INPUT_NAME: images.numpy()})
    assert np.abs(got - expected).max() < ONNX_TOLERANCE


def _halved_checkpoint(trained_run: Path, out: Path, factor: float = 0.5) -> Path:
    """A second member: the trained run's checkpoint with its weights scaled."""
    state = torch.load(trained_run / "best.pt", map_location="cpu", weights_only=False)
    with torch.no_grad():
        for tensor in state["model"].values():
            if tensor.is_floating_point():
                tensor.mul_(factor)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


@pytest.mark.slow
def test_a_member_of_an_exported_graph_joins_a_new_ensemble(trained_run, tmp_path):
    """A bundled ensemble's member whose checkpoint is gone: cut out of the graph (it computes
    what its network computes) and averaged with a new checkpoint by `--onnx-member`, the card
    keeping what it knew of that member."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from busdx.models.from_onnx import extract_member, member_outputs
    from busdx.models.segmentation import SegmenterExport, load_segmenter_checkpoint

    first = trained_run / "best.pt"
    second = _halved_checkpoint(trained_run, tmp_path / "second" / "best.pt")
    third = _halved_checkpoint(trained_run, tmp_path / "third" / "best.pt", factor=0.8)
    old, card = tmp_path / "old.onnx", tmp_path / "model_card.json"
    assert main(["export", "segmentation", "--checkpoint", str(first), str(second),
                 "--out", str(old), "--card", str(card)]) == 0
    old_members = load_card(card)["segmenter"]["members"]

    images = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(5))

    def torch_logits(checkpoint: Path) -> np.ndarray:
        with torch.no_grad():
            return SegmenterExport(load_segmenter_checkpoint(checkpoint)[0]).eval()(images).numpy()

    def onnx_logits(model) -> np.ndarray:
        data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run([SEGMENTER_OUTPUT], {INPUT_NAME: images.numpy()})[0]

    graph = onnx.load(str(old))
    assert len(member_outputs(graph)) == 2
    assert np.abs(onnx_logits(extract_member(graph, 1)) - torch_logits(second)).max() < ONNX_TOLERANCE
    assert len(member_outputs(extract_member(graph, 0))) == 1  # a single network is one member

    new = tmp_path / "new.onnx"
    assert main(["export", "segmentation", "--checkpoint", str(third), "--onnx-member",
                 f"{old}:1", "--out", str(new), "--card", str(card)]) == 0
    expected = np.mean([torch_logits(third), torch_logits(second)], axis=0)
    assert np.abs(onnx_logits(new) - expected).max() < ONNX_TOLERANCE
    section = load_card(card)["segmenter"]
    assert section["ensemble"].startswith("2 networks")
    assert section["onnx_vs_torch_max_abs_diff"] < ONNX_TOLERANCE
    assert section["members"][0]["checkpoint"] == str(third)
    kept = section["members"][1]
    assert kept["checkpoint"] == old_members[1]["checkpoint"] == str(second)
    assert kept["training"] == old_members[1]["training"] and "old.onnx" in kept["source"]

    assert main(["export", "segmentation", "--checkpoint", str(third), "--onnx-member",
                 f"{old}:2", "--out", str(tmp_path / "x.onnx"), "--card", ""]) == 2
    assert main(["export", "segmentation", "--checkpoint", str(third), "--onnx-member",
                 str(old), "--out", str(tmp_path / "x.onnx"), "--card", ""]) == 2


@pytest.mark.slow
def test_validation_selection_keeps_the_baseline_unless_beaten(trained_run, fixtures_root, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    card = tmp_path / "model_card.json"
    assert main(["export", "segmentation", "--checkpoint", str(trained_run / "best.pt"),
                 "--out", str(a), "--card", ""]) == 0
    other = _halved_checkpoint(trained_run, tmp_path / "other" / "best.pt", factor=0.2)
    assert main(["export", "segmentation", "--checkpoint", str(other), "--out", str(b),
                 "--card", ""]) == 0
    base = ["evaluate", "segmentation", "--data", str(fixtures_root), "--card", str(card),
            "--compare", f"a={a}", "--compare", f"b={b}"]
    assert main([*base, "--baseline", "a", "--min-gain", "1.0"]) == 0
    selection = load_card(card)["segmenter"]["selection"]
    assert selection["chosen"] == "a"  # nothing gains a whole unit of Dice
    assert set(selection["val_dice_original_resolution"]) == {"a", "b"}
    assert "test" not in load_card(card)["segmenter"]  # validation only
    dices = selection["val_dice_original_resolution"]
    assert main([*base, "--not-eligible", "a=too slow"]) == 0
    selection = load_card(card)["segmenter"]["selection"]
    assert selection["chosen"] == "b" and selection["not_eligible"] == {"a": "too slow"}
    assert selection["val_dice_original_resolution"] == dices  # the same scores again
    from busdx.evaluation.evidence import history as evidence_history

    # earlier rounds stay, in the evidence's history
    earlier = [h.results for h in evidence_history("segmenter.selection", tmp_path / "evidence")]
    assert [h["chosen"] for h in earlier] == ["a"] and earlier[0]["not_eligible"] == {}
    assert main([*base, "--baseline", "c"]) == 2
    assert main([*base, "--compare", "broken"]) == 2


@pytest.mark.slow
def test_threshold_sweep_on_validation_moves_the_served_threshold_only_when_it_pays(
    trained_run, fixtures_root, tmp_path
):
    graph, card = tmp_path / "a.onnx", tmp_path / "model_card.json"
    assert main(["export", "segmentation", "--checkpoint", str(trained_run / "best.pt"),
                 "--out", str(graph), "--card", str(card)]) == 0
    base = ["evaluate", "segmentation", "--data", str(fixtures_root), "--card", str(card),
            "--model", str(graph), "--thresholds", "0.3,0.7"]
    assert main([*base, "--min-gain", "1.0"]) == 0
    section = load_card(card)["segmenter"]
    sweep = section["threshold_sweep"]
    assert list(sweep["val_dice_by_threshold"]) == ["0.3", "0.5", "0.7"]  # the served one too
    assert sweep["chosen"] == 0.5 and section.get("threshold", 0.5) == 0.5  # nothing gains 1.0
    assert "test" not in section  # validation only

    assert main([*base, "--min-gain", "-1.0"]) == 0  # any best is taken
    section = load_card(card)["segmenter"]
    sweep = section["threshold_sweep"]
    dices = sweep["val_dice_by_threshold"]
    assert sweep["chosen"] == sweep["best"] == section["threshold"]
    assert dices[f"{sweep['best']:g}"] == max(dices.values())
    # the evaluation uses the card's threshold from then on, as serving does
    assert main(["evaluate", "segmentation", "--data", str(fixtures_root), "--card", str(card),
                 "--model", str(graph), "--split", "val"]) == 0
    assert load_card(card)["segmenter"]["validation"]["threshold"] == sweep["best"]

    assert main([*base[:-1], "0,0.5"]) == 2
    assert main([*base[:-1], "half"]) == 2


@pytest.mark.slow
def test_training_at_another_size_exports_and_evaluates_at_it(fixtures_root, tmp_path):
    import onnx

    out, cache = tmp_path / "run96", str(tmp_path / "cache")
    base = ["train", "segmentation", "--data", str(fixtures_root), "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--limit-train", "4", "--threads", "1",
            "--no-pretrained", "--cache-dir", cache]
    assert main([*base, "--size", "100"]) == 2  # not a multiple of 32: refused before any work
    assert not (out / "last.pt").exists()
    assert main([*base, "--size", "96"]) == 0
    assert main([*base, "--size", "128", "--resume"]) == 2  # resumed at another size: refused
    graph, card = tmp_path / "seg96.onnx", tmp_path / "model_card.json"
    assert main(["export", "segmentation", "--checkpoint", str(out / "best.pt"), "--out",
                 str(graph), "--card", str(card)]) == 0
    dims = onnx.load(str(graph)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[2:]] == [96, 96]
    section = load_card(card)["segmenter"]
    assert section["input_size"] == 96
    assert section["training"]["val_dice_at"].startswith("96x96")
    assert main(["evaluate", "segmentation", "--data", str(fixtures_root), "--card", str(card),
                 "--model", str(graph), "--split", "val"]) == 0
    assert load_card(card)["segmenter"]["validation"]["images"] > 0


def test_segmenter_cross_validation_validates_on_a_whole_fold(fixtures_root):
    from busdx.training.segmentation import SegTrainConfig, _split_records

    train, val = _split_records(SegTrainConfig(data=str(fixtures_root), val_fold=2))
    assert {r.fold for r in val} == {2} and {r.fold for r in train} == {1, 3, 4}


@pytest.mark.slow
def test_a_member_of_an_exported_graph_is_fine_tuned(trained_run, fixtures_root, tmp_path):
    """`--init GRAPH.onnx:INDEX` rebuilds the member as a torch network, gives its folded batch
    norms statistics again without changing its output, and trains on from it; a mismatched
    --encoder is refused before any training."""
    from busdx.models.from_onnx import recover_segmenter, restore_batch_norm_statistics
    from busdx.models.segmentation import SegmenterExport, load_segmenter_checkpoint

    graph = tmp_path / "one.onnx"
    assert main(["export", "segmentation", "--checkpoint", str(trained_run / "best.pt"),
                 "--out", str(graph), "--no-evidence"]) == 0
    images = torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    original = SegmenterExport(load_segmenter_checkpoint(trained_run / "best.pt")[0]).eval()
    net, config = recover_segmenter(graph, 0)
    assert config.encoder == "tf_efficientnet_lite0"
    wrapped = SegmenterExport(net).eval()
    with torch.no_grad():
        expected = original(images)
        assert (wrapped(images) - expected).abs().max() < ONNX_TOLERANCE
        folded = [m.running_var.clone() for m in net.modules()
                  if isinstance(m, torch.nn.BatchNorm2d)]
        restore_batch_norm_statistics(wrapped, [images])
        assert (wrapped(images) - expected).abs().max() < ONNX_TOLERANCE
        restored = [m.running_var for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not all(torch.allclose(a, b) for a, b in zip(folded, restored, strict=True))

    out = tmp_path / "tuned"
    tuned = train_segmenter(_config(fixtures_root, out, init=f"{graph}:0", lr=1e-4))
    assert tuned.checkpoint.is_file()
    assert json.loads((out / "config.json").read_text())["init"] == f"{graph}:0"
    with pytest.raises(BusdxError, match="--encoder"):
        train_segmenter(_config(fixtures_root, tmp_path / "wrong", init=f"{graph}:0",
                                model=SegmenterConfig(encoder="tf_efficientnet_lite1",
                                                      pretrained=False)))


@pytest.mark.slow
def test_the_appearance_check_is_fitted_into_the_graph_and_warns(trained_run, fixtures_root,
                                                                  tmp_path):
    """`busdx evaluate appearance` fits the Gaussian of the segmenter's pooled encoder features
    into the staging graph: its `appearance` output is the Mahalanobis distance numpy computes
    from the fit, the release gains the threshold, and the product then puts the distance among
    the input check's statistics, with the 'may not be a breast ultrasound' warning above it."""
    import shutil

    import onnx
    import onnxruntime as ort

    from busdx.evaluation import appearance as ap
    from busdx.inference.models import Models
    from busdx.inference.pipeline import analyze
    from busdx.inference.quality import NOT_ULTRASOUND, with_appearance
    from busdx.models.contract import APPEARANCE_OUTPUT, FEATURES_OUTPUT
    from busdx.release import load_release
    from stand_in_models import REPO

    stage = tmp_path / "stage"
    stage.mkdir()
    for name in ("segmenter.onnx", "classifier.onnx", "release.json"):
        shutil.copy(REPO / "models" / name, stage / name)
    assert main(["export", "segmentation", "--checkpoint", str(trained_run / "best.pt"),
                 "--out", str(stage / "segmenter.onnx")]) == 0
    plain = stage / "plain.onnx"
    shutil.copy(stage / "segmenter.onnx", plain)
    not_us = fixtures_root.parent / "not-ultrasound"
    assert main(["evaluate", "appearance", "--data", str(fixtures_root),
                 "--breast", str(fixtures_root.parent / "breast-lesions-usg"),
                 "--models", str(stage),
                 "--not-ultrasound", str(not_us), "--threads", "1"]) == 0
    threshold = load_release(stage / "release.json").input_check.appearance_threshold
    assert threshold is not None and threshold > 0

    images = [np.random.default_rng(0).random((90, 120)),
              np.linspace(0, 1, 64 * 80).reshape(64, 80)]
    features = ap.segmenter_outputs(ort.InferenceSession(str(plain)), images, 224,
                                    FEATURES_OUTPUT)
    assert features.shape[1] == 16 + 24 + 40 + 112 + 320  # EfficientNet-Lite0's five stages
    graph = onnx.load(str(stage / "segmenter.onnx"))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    model = ap.AppearanceModel(weights["appearance/mean"].astype(np.float64),
                               weights["appearance/whitening"].astype(np.float64), 1, 0.0)
    got = ap.segmenter_outputs(ort.InferenceSession(str(stage / "segmenter.onnx")), images, 224,
                               APPEARANCE_OUTPUT)
    np.testing.assert_allclose(got.reshape(-1), model.distances(features), rtol=1e-3)

    models = Models.load(stage, threads=1)
    assert models.appearance_threshold == pytest.approx(threshold)
    scan = analyze(images[0], models, render_overlays=False)
    assert scan.input_check.statistics["appearance"] == pytest.approx(float(got[0, 0]), rel=1e-3)
    far = with_appearance(scan.input_check, 2 * threshold, threshold)
    assert far.warnings[0].startswith(NOT_ULTRASOUND) and far.outside["appearance"] == "high"
    near = with_appearance(None, 0.5 * threshold, threshold)
    assert not near.warnings and near.statistics == {"appearance": 0.5 * threshold}


def test_an_epoch_balances_two_sites_without_losing_its_length():
    """epoch_order: one site alone is a plain permutation; with a second, the epoch keeps the
    first site's length, draws the asked share from the second (each of its samples as often as
    the others, give or take one) and repeats no sample of the first."""
    from busdx.training.segmentation import epoch_order

    rng = np.random.default_rng(3)
    assert sorted(epoch_order(10, 0, 0.5, rng)) == list(range(10))
    order = epoch_order(100, 7, 0.3, np.random.default_rng(4))
    first, second = order[order < 100], order[order >= 100]
    assert len(order) == 100 and len(second) == 30
    assert len(set(first.tolist())) == len(first) == 70
    counts = np.bincount(second - 100, minlength=7)
    assert counts.max() - counts.min() <= 1


@pytest.mark.slow
def test_a_second_site_joins_the_training_set(fixtures_root, tmp_path):
    """--breast: BrEaST's development half (never its test half) is letterboxed whole, normal
    scans with empty masks, and trained on beside BUS-BRA; the run records where it came from."""
    from busdx.data.sites import read_breast

    breast = fixtures_root.parent / "breast-lesions-usg"
    dev = [r for r in read_breast(breast) if r.split == "dev"]
    out = tmp_path / "run"
    result = train_segmenter(_config(fixtures_root, out, breast=str(breast), site_share=0.5))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == 8 + len(dev)
    assert json.loads((out / "config.json").read_text())["breast"] == str(breast)
    assert result.checkpoint.is_file()
    with pytest.raises(BusdxError, match="site-share"):
        _config(fixtures_root, out, site_share=1.0)


def test_a_member_exported_at_another_size_is_recovered_and_exported_at_it(tmp_path):
    """A graph member is probed, and exported again, at the size its graph was exported at,
    not at the default 224."""
    from busdx.models.from_onnx import graph_input_size, recover_segmenter
    from busdx.models.segmentation import build_segmenter, export_onnx
    from busdx.training.segmentation import OnnxMember, export_with_provenance

    torch.manual_seed(0)
    net = build_segmenter(SegmenterConfig(encoder="tf_efficientnet_lite0",
                                          pretrained=False)).eval()
    with torch.no_grad():  # statistics as a trained network has them (fresh ones fold to 0)
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    graph = tmp_path / "at256.onnx"
    export_onnx(net, graph, 256)
    assert graph_input_size(graph) == 256
    recovered, config = recover_segmenter(graph, 0)
    assert config.encoder == "tf_efficientnet_lite0"
    out = tmp_path / "again.onnx"
    section = export_with_provenance([], out, [], onnx_members=[OnnxMember(graph, 0)])
    assert section["input_size"] == 256 and graph_input_size(out) == 256
    assert section["onnx_vs_torch_max_abs_diff"] < ONNX_TOLERANCE

    # stored as float16: half the file, the same network to within the rounding of its weights
    from busdx.models.storage import weight_storage

    half = tmp_path / "half.onnx"
    stored = export_with_provenance([], half, [], onnx_members=[OnnxMember(graph, 0)],
                                    storage="float16")
    assert stored["weights_storage"] == "float16" and weight_storage(half) == "float16"
    assert half.stat().st_size < 0.6 * out.stat().st_size
    import onnxruntime as ort

    probe = np.random.default_rng(0).random((2, 1, 256, 256), dtype=np.float32)
    full, rounded = (ort.InferenceSession(str(g), providers=["CPUExecutionProvider"]).run(
        [SEGMENTER_OUTPUT], {INPUT_NAME: probe})[0] for g in (out, half))
    # an untrained network's logits are large; the rounding moves them by a sliver of that
    assert np.abs(rounded - full).max() < 0.05 * np.abs(full).max()
    assert stored["onnx_vs_torch_max_abs_diff"] > section["onnx_vs_torch_max_abs_diff"]


def _pixel_teacher(path: Path, scale: float = 8.0, output: str = "mask_logits") -> Path:
    """A stand-in segmenter graph: ``output`` = scale * (image - 0.5), pixel by pixel (another
    output name makes a graph that is no segmenter's)."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["n", 1, "h", "w"]
    graph = helper.make_graph(
        [helper.make_node("Sub", ["image", "half"], ["c"]),
         helper.make_node("Mul", ["c", "scale"], [output])],
        "teacher", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, dims)],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
                     helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_teacher_teaches_lesion_images_and_the_labels_lesion_free_ones():
    from busdx.training.segmentation import taught_mask_loss

    teacher = torch.full((2, 1, 8, 8), 3.0)  # a teacher sure of a lesion everywhere
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, 2:5, 2:5] = 1.0  # the first image shows a lesion, the second none
    # the student that agrees with the teacher on the first image and with the empty mask on
    # the second has no gradient: each image is taught by what is trusted there
    student = torch.cat([teacher[:1], torch.full((1, 1, 8, 8), -40.0)]).requires_grad_(True)
    taught_mask_loss(student, teacher, target).backward()
    assert float(student.grad[0].abs().max()) < 1e-7
    assert float(student.grad[1].abs().max()) < 1e-7
    # a teacher at another resolution is resized to the student's
    small = torch.full((2, 1, 4, 4), 3.0)
    assert float(taught_mask_loss(student.detach(), small, target)) == pytest.approx(
        float(taught_mask_loss(student.detach(), teacher, target)), abs=1e-6)


@pytest.mark.slow
def test_a_taught_segmenter_run_records_its_teacher(fixtures_root, tmp_path):
    teacher = _pixel_teacher(tmp_path / "teacher.onnx")
    losses = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"taught{weight}"
        result = train_segmenter(_config(fixtures_root, out, teacher=str(teacher),
                                         teacher_weight=weight))
        losses[weight] = result.history["train_loss"][0]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["teacher"]["graph"] == str(teacher)
        assert summary["config"]["teacher_weight"] == weight
    assert losses[0.0] != pytest.approx(losses[1.0], rel=1e-3)
    with pytest.raises(BusdxError, match="no output 'mask_logits'"):
        train_segmenter(_config(fixtures_root, tmp_path / "wrong",
                                teacher=str(_pixel_teacher(tmp_path / "cls.onnx",
                                                           output="logit"))))
    assert not (tmp_path / "wrong").exists()
    with pytest.raises(BusdxError, match="teacher-weight"):
        SegTrainConfig(teacher_weight=2.0)


@pytest.mark.slow
def test_frozen_batch_norms_keep_their_statistics_while_the_rest_trains(trained_run,
                                                                       fixtures_root, tmp_path):
    start = torch.load(trained_run / "best.pt", weights_only=False)["model"]
    runs = {}
    for frozen in (False, True):
        out = tmp_path / f"frozen{frozen}"
        train_segmenter(_config(fixtures_root, out, init=str(trained_run / "best.pt"),
                                freeze_batch_norm=frozen))
        runs[frozen] = torch.load(out / "best.pt", weights_only=False)["model"]
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in start if k.endswith("weight") and start[k].dim() == 4]
    assert stats and weights
    assert all(torch.equal(runs[True][k], start[k]) for k in stats)
    assert not all(torch.equal(runs[False][k], start[k]) for k in stats)
    # the rest still learns
    assert not all(torch.equal(runs[True][k], start[k]) for k in weights)
