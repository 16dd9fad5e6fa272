"""The training loop both tasks share (busdx.training.loop): a schedule counted in steps, the time
budget as a recorded hard stop, atomic checkpoints, resume equal to an uninterrupted run, and the
recipe as a JSON file (busdx.training.config). Tiny runs on the committed fixtures."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

from busdx.data.index import load_index  # noqa: E402
from busdx.data.splits import SplitConfig, make_split  # noqa: E402
from busdx.errors import BusdxError  # noqa: E402
from busdx.models.segmentation import SegmenterConfig  # noqa: E402
from busdx.training import classification as tc  # noqa: E402
from busdx.training import loop  # noqa: E402
from busdx.training import segmentation as ts  # noqa: E402
from busdx.training.common import save_checkpoint  # noqa: E402
from busdx.training.config import merge  # noqa: E402

EPOCHS = 4  # an uninterrupted run; the interrupted ones stop halfway and are resumed


class Crash(Exception):
    """Stands for a killed process."""


def _crash_on_call(monkeypatch, module, name: str, call: int) -> None:
    """Make ``module.name`` raise Crash on its ``call``-th call."""
    real, calls = getattr(module, name), []

    def crashing(*args, **kwargs):
        calls.append(None)
        if len(calls) == call:
            raise Crash(f"{name}, call {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, crashing)


def _seg_config(fixtures_root: Path, out: Path, **kw) -> ts.SegTrainConfig:
    base = dict(data=str(fixtures_root), out=str(out), epochs=EPOCHS, batch_size=4, limit_train=8,
                threads=1, size=64, cache_dir=str(out.parent / "cache"), warmup_steps=3,
                model=SegmenterConfig(pretrained=False))
    return ts.SegTrainConfig(**{**base, **kw})


def _without_time(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "seconds"}


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _same_tensors(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_segmentation_run(a: Path, b: Path) -> None:
    """Same history (but for the clock), same best and final weights, same optimizer state."""
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (a, b))
    assert _without_time(ha) == _without_time(hb)
    best_a, best_b = _load(a / "best.pt"), _load(b / "best.pt")
    assert best_a["epoch"] == best_b["epoch"] and best_a["val_dice"] == best_b["val_dice"]
    _same_tensors(best_a["model"], best_b["model"])
    last_a, last_b = _load(a / "last.pt"), _load(b / "last.pt")
    _same_tensors(last_a["modules"], last_b["modules"])
    _same_tensors(last_a["optimizer"]["state"], last_b["optimizer"]["state"])
    assert last_a["step"] == last_b["step"] == EPOCHS * 2


@pytest.fixture(scope="module")
def seg_run(fixtures_root, tmp_path_factory) -> ts.SegTrainResult:
    """The uninterrupted segmentation run the others are compared with."""
    return ts.train_segmenter(_seg_config(fixtures_root, tmp_path_factory.mktemp("seg") / "run"))


# ------------------------------------------------------------------------------- the schedule


def test_the_schedule_is_a_function_of_the_step():
    assert loop.warmup_cosine(0, 100, 4) == pytest.approx(0.25)  # warming up
    assert loop.warmup_cosine(3, 100, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.03)))
    assert loop.warmup_cosine(50, 100, 4) == pytest.approx(0.5)  # halfway down the cosine
    assert loop.warmup_cosine(100, 100, 4) == pytest.approx(0.0)


def test_the_learning_rates_follow_the_planned_steps(seg_run):
    lrs = seg_run.history["lr"]  # of each epoch's last step: 2 steps an epoch, 8 in all
    expected = [1e-3 * loop.warmup_cosine(2 * e + 1, 2 * EPOCHS, 3) for e in range(EPOCHS)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert seg_run.steps == seg_run.total_steps == 2 * EPOCHS and seg_run.stopped == "epochs"


def test_a_time_budget_that_is_not_reached_changes_nothing(seg_run, fixtures_root, tmp_path):
    run = ts.train_segmenter(_seg_config(fixtures_root, tmp_path / "run", max_minutes=1e6))
    assert run.stopped == "epochs"
    _assert_same_segmentation_run(seg_run.out, run.out)


def test_the_time_budget_stops_the_run_says_so_and_resumes_to_the_same_end(
    seg_run, fixtures_root, tmp_path
):
    out = tmp_path / "run"
    # spent as soon as the first epoch ends: no second epoch starts
    cut = ts.train_segmenter(_seg_config(fixtures_root, out, max_minutes=1e-9))
    assert cut.stopped == "time_budget" and cut.epochs_run == 1 and cut.steps == 2
    assert json.loads((out / "summary.json").read_text())["stopped"] == "time_budget"
    # the budget did not touch the schedule: the first epoch is the uninterrupted run's
    assert _without_time(cut.history) == {k: v[:1] for k, v in _without_time(seg_run.history).items()}

    resumed = ts.train_segmenter(_seg_config(fixtures_root, out, resume=True))
    assert resumed.stopped == "epochs" and resumed.epochs_run == EPOCHS
    _assert_same_segmentation_run(seg_run.out, out)


# ------------------------------------------------------------------------ checkpoints, resume


def test_an_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.ones(3)})

    def killed(*args):
        raise Crash("killed between writing the new file and moving it into place")

    with monkeypatch.context() as m:
        m.setattr("busdx.training.common.os.replace", killed)
        with pytest.raises(Crash):
            save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(3)})
    state = _load(path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_segmentation_resumed_after_a_crash_is_the_uninterrupted_run(
    seg_run, fixtures_root, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        # killed while validating epoch 3: last.pt holds epoch 2
        _crash_on_call(m, ts, "evaluate_arrays", 3)
        with pytest.raises(Crash):
            ts.train_segmenter(_seg_config(fixtures_root, out))
    assert _load(out / "last.pt")["epoch"] == 2
    with monkeypatch.context() as m:
        # killed while writing epoch 3's last.pt: the one of epoch 2 is still whole
        m.setattr(loop, "save_checkpoint", _crash_last(loop.save_checkpoint))
        with pytest.raises(Crash):
            ts.train_segmenter(_seg_config(fixtures_root, out, resume=True))
    assert _load(out / "last.pt")["epoch"] == 2
    assert not list(out.glob("*.tmp"))  # nor a half-written file beside it
    resumed = ts.train_segmenter(_seg_config(fixtures_root, out, resume=True))
    assert resumed.epochs_run == EPOCHS and resumed.best_epoch == seg_run.best_epoch
    _assert_same_segmentation_run(seg_run.out, out)


def _crash_last(save):
    """``save`` that dies once the temporary file of a last.pt is written, before the move."""

    def saving(path, state):
        if Path(path).name != loop.LAST_CHECKPOINT:
            return save(path, state)
        with pytest.MonkeyPatch.context() as m:
            m.setattr("busdx.training.common.os.replace", _raise_crash)
            return save(path, state)

    return saving


def _raise_crash(*args):
    raise Crash("killed mid-write")


def test_classification_resumed_after_a_crash_is_the_uninterrupted_run(
    fixtures_root, tmp_path, monkeypatch
):
    """With what a resumed run must carry besides the network: a weight average, an auxiliary
    head, oversampling's draws and dropout's random state."""
    split = make_split(load_index(fixtures_root), SplitConfig(test_fold=1))
    train = tc.load_samples(split.train, tmp_path / "cache")
    val = tc.load_samples(split.val, tmp_path / "cache")
    aux = tc.auxiliary_targets(split.train)
    config = tc.ClassifierTrainConfig(arch="lite0", weights="none", size=64, epochs=EPOCHS,
                                      max_batches=2, batch_size=4, device="cpu", ema=0.5,
                                      aux_weight=0.3, imbalance="oversample", patience=EPOCHS)
    straight = tc.train_classifier(train, val, config, tmp_path / "straight", aux=aux)
    assert straight.stopped == "epochs" and straight.epochs_run == EPOCHS

    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        _crash_on_call(m, tc, "predict_logits", 3)  # killed while validating epoch 3
        with pytest.raises(Crash):
            tc.train_classifier(train, val, config, out, aux=aux)
    assert len(json.loads((out / "history.json").read_text())) == 2
    resumed = tc.train_classifier(train, val, replace(config, resume=True), out, aux=aux)

    def without_time(rows):
        return [{k: v for k, v in r.items() if k != "minutes"} for r in rows]

    np.testing.assert_equal(without_time(resumed.history), without_time(straight.history))
    assert resumed.best_epoch == straight.best_epoch
    best_a, best_b = _load(straight.checkpoint), _load(resumed.checkpoint)
    _same_tensors(best_a["state_dict"], best_b["state_dict"])
    assert best_a["val_auc"] == best_b["val_auc"] or math.isnan(best_a["val_auc"])
    _same_tensors(_load(tmp_path / "straight" / "last.pt")["modules"],
                  _load(out / "last.pt")["modules"])
    # the checkpoint still loads as every classifier.pt does, and records the recipe
    model, ckpt = tc.load_checkpoint(resumed.checkpoint)
    assert ckpt["config"]["ema"] == 0.5 and ckpt["epoch"] == resumed.best_epoch


def test_resume_refuses_another_recipe_but_not_another_machine(seg_run):
    config = ts.SegTrainConfig.load(seg_run.out / "config.json")
    state = loop.read_last(seg_run.out, replace(config, threads=2, device="cpu",
                                                max_minutes=5.0).recipe())
    assert state["epoch"] == EPOCHS
    with pytest.raises(BusdxError, match="lr=0.001"):
        loop.read_last(seg_run.out, replace(config, lr=0.01).recipe())
    assert loop.read_last(seg_run.out.parent / "nothing", config.recipe()) is None


# ------------------------------------------------------------------------------- the recipe


def test_configs_round_trip_through_json(tmp_path):
    seg = ts.SegTrainConfig(epochs=3, max_minutes=2.5, val_fold=2,
                            model=SegmenterConfig(encoder="tf_efficientnet_lite1",
                                                  decoder_channels=(64, 32, 16, 8, 4)))
    assert ts.SegTrainConfig.load(seg.save(tmp_path / "seg.json")) == seg
    cls = tc.ClassifierTrainConfig(arch="lite1", input="both", augment="strong", ema=0.9,
                                   max_minutes=None, test_fold=4)
    assert tc.ClassifierTrainConfig.load(cls.save(tmp_path / "cls.json")) == cls


def test_merge_layers_defaults_then_file_then_command_line(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"epochs": 30, "lr": 1, "loss": "dice",
                                "model": {"encoder": "tf_efficientnet_lite2"}}))
    config = merge(ts.SegTrainConfig, path, {"epochs": 5, "model": {"pretrained": False}})
    assert config.epochs == 5  # the command line wins
    assert config.loss == "dice" and config.lr == 1.0 and isinstance(config.lr, float)  # the file
    assert config.model == SegmenterConfig(encoder="tf_efficientnet_lite2", pretrained=False)
    assert config.batch_size == ts.SegTrainConfig().batch_size  # the default
    assert merge(ts.SegTrainConfig, None, {}) == ts.SegTrainConfig()
    assert merge(tc.ClassifierTrainConfig, None, {"ema": 0.5}).ema == 0.5


@pytest.mark.parametrize("values, named", [
    ({"epohcs": 3}, "'epohcs'"),
    ({"model": {"encodr": "x"}}, "'model.encodr'"),
    ({"epochs": "ten"}, "'epochs' must be int"),
    ({"model": "lite0"}, "'model' must be an object"),
])
def test_a_bad_key_in_a_config_file_is_named(tmp_path, values, named):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(values))
    with pytest.raises(BusdxError, match=re.escape(named)) as err:
        merge(ts.SegTrainConfig, path, {})
    assert str(path) in str(err.value)
    with pytest.raises(BusdxError, match=re.escape(named)):
        ts.SegTrainConfig.load(path)


def test_bad_values_are_user_errors(tmp_path):
    with pytest.raises(BusdxError, match="unknown setting 'nope'"):
        merge(tc.ClassifierTrainConfig, None, {"nope": 1})
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"ema": 1.5}))  # the config's own check
    with pytest.raises(BusdxError, match="ema"):
        tc.ClassifierTrainConfig.load(path)
    with pytest.raises(BusdxError, match="no config file"):
        tc.ClassifierTrainConfig.load(tmp_path / "missing.json")


def test_a_run_trained_again_from_its_config_json_is_the_same_run(seg_run, tmp_path):
    recorded = json.loads((seg_run.out / "config.json").read_text())
    assert recorded["epochs"] == EPOCHS and recorded["model"]["pretrained"] is False
    assert recorded["resume"] is False  # the recipe, not how the run was started
    again = merge(ts.SegTrainConfig, seg_run.out / "config.json", {"out": str(tmp_path / "again")})
    ts.train_segmenter(again)
    _assert_same_segmentation_run(seg_run.out, tmp_path / "again")


# ------------------------------------------------------------------------------- layering


def test_training_imports_nothing_above_it():
    """Training sits below evaluation, inference, the API and the CLI."""
    training = Path(ts.__file__).parent
    pattern = re.compile(r"busdx\.(evaluation|inference|api|cli)\b")
    offending = [f"{p.name}:{n}" for p in sorted(training.glob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offending == []


def test_the_command_line_overrides_a_recipe_file_only_where_given(tmp_path):
    """`busdx train segmentation --config FILE --seed 3`: the file's recipe, with the one
    option given on the command line; the same for classification."""
    from busdx.cli import config_with_file
    from busdx.cli.classification import _train_config as classifier_config
    from busdx.cli.main import build_parser
    from busdx.cli.segmentation import _train_config as segmenter_config
    from busdx.training.classification import ClassifierTrainConfig
    from busdx.training.segmentation import SegTrainConfig

    recipe = tmp_path / "seg.json"
    SegTrainConfig(epochs=3, lr=5e-4, batch_size=4).save(recipe)
    args = build_parser().parse_args(["train", "segmentation", "--config", str(recipe),
                                      "--seed", "3", "--encoder", "lite1"])
    config = config_with_file(segmenter_config, args, args.parser, args.config)
    assert (config.epochs, config.lr, config.batch_size, config.seed) == (3, 5e-4, 4, 3)
    assert config.model.encoder == "tf_efficientnet_lite1"

    recipe = tmp_path / "cls.json"
    ClassifierTrainConfig(arch="lite1", input="both", epochs=4).save(recipe)
    args = build_parser().parse_args(["train", "classification", "--config", str(recipe),
                                      "--epochs", "2"])
    config = config_with_file(classifier_config, args, args.parser, args.config)
    assert (config.arch, config.input, config.epochs) == ("lite1", "both", 2)
    (tmp_path / "bad.json").write_text('{"arch": "lite1", "learning_rate": 1}')
    args = build_parser().parse_args(["train", "classification", "--config",
                                      str(tmp_path / "bad.json")])
    with pytest.raises(BusdxError, match="learning_rate"):
        config_with_file(classifier_config, args, args.parser, args.config)
