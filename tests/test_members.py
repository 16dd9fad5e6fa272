"""Choosing the classifier's ensemble members on validation (busdx.evaluation.members) and
recording the choice with `busdx evaluate classification --compare`."""

import json

import pytest

from busdx.cli.main import main
from busdx.errors import BusdxError
from busdx.evaluation.members import ScoredEnsemble, choose, option_members
from busdx.evaluation.model_card import load_card, write_card


def scored_card(checkpoints: dict[str, str], ensemble_auc: float, command: str = "cmd") -> dict:
    """A card as `train classification --calibrate-only` writes it for a both + crop pair."""
    names = list(checkpoints)
    inputs = {names[0]: "both", **{n: "crop" for n in names[1:]}}
    return {"classifier": {
        "checkpoints": list(checkpoints.values()),
        "crop": {"size": 224, "context": 0.3, "contexts": [0.3]},
        "calibration": {"command": command},
        "candidates": {n: {"checkpoint": c, "input": inputs[n],
                           "passes_per_crop": 2 if inputs[n] == "both" else 1}
                       for n, c in checkpoints.items()},
        # single networks and mirror averaging score higher here: they must not be read
        "crop_comparison_val_auc": {
            f"model={names[0]}, tta=none, contexts=0.3": 0.99,
            f"model={names[0]}, tta=flip, contexts=0.3": 0.99,
            "model=ensemble_both_crop, tta=flip, contexts=0.3": 0.99,
            "model=ensemble_both_crop, tta=none, contexts=0.3": ensemble_auc,
        },
    }}


def test_the_scored_ensemble_is_every_candidate_without_mirroring():
    s = ScoredEnsemble.from_card(scored_card({"b": "r/b.pt", "c": "r/c.pt"}, 0.95, "busdx x"))
    assert s.val_auc == 0.95 and s.passes == 3
    assert s.checkpoints == ("r/b.pt", "r/c.pt") and s.command == "busdx x"
    assert option_members("ensemble_both_crop", {"b": {"input": "both"}, "c": {"input": "crop"},
                                                 "i": {"input": "image"}}) == {"b", "c"}
    with pytest.raises(BusdxError, match="calibrate-only"):
        ScoredEnsemble.from_card({"classifier": {}})


def test_a_card_that_ships_mirror_averaging_is_read_with_it():
    card = scored_card({"b": "r/b.pt", "c": "r/c.pt"}, 0.95)
    card["classifier"]["tta"] = "flip"
    card["classifier"]["crop_comparison_val_auc"][
        "model=ensemble_both_crop, tta=flip, contexts=0.3"] = 0.96
    s = ScoredEnsemble.from_card(card)
    assert (s.val_auc, s.passes, s.tta) == (0.96, 6, "flip")
    # like with like: a round mixing mirrored and plain scores is refused
    from busdx.evaluation.members import member_selection

    plain = ScoredEnsemble.from_card(scored_card({"b": "r/b.pt", "c": "r/c.pt"}, 0.95))
    with pytest.raises(BusdxError, match="mirror averaging"):
        member_selection({"now": s, "new": plain}, "now", 0.005, "rule")
    assert member_selection({"now": s, "new": s}, "now", 0.005, "rule")["tta"] == "flip"


def test_the_baseline_stays_unless_beaten_by_the_margin():
    def e(auc):
        return ScoredEnsemble(auc, 3, ("x",), None)

    assert choose({"old": e(0.950), "new": e(0.954)}, "old", 0.005) == "old"
    assert choose({"old": e(0.950), "new": e(0.955)}, "old", 0.005) == "new"
    assert choose({"old": e(0.950), "new": e(0.940)}, "old", 0.0) == "old"
    with pytest.raises(BusdxError, match="baseline"):
        choose({"new": e(0.9)}, "old", 0.005)


def test_evaluate_compare_records_the_choice_only_when_it_is_shipped(tmp_path, capsys):
    folders = {}
    for name, ckpts, auc in (("old", {"b": "runs/b.pt", "c": "runs/c.pt"}, 0.950),
                             ("new", {"b": "runs/b.pt", "c2": "runs/c2/classifier.pt"}, 0.957)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        write_card(folders[name], scored_card(ckpts, auc))
    run = tmp_path / "runs" / "c2"
    run.mkdir(parents=True)
    (run / "classifier.pt").write_bytes(b"")
    (run / "training.json").write_text(json.dumps({
        "command": "busdx train classification", "best_epoch": 7, "wall_minutes": 2.5,
        "history": [{"val_auc": 0.91}, {"val_auc": 0.93}, {"val_auc": 0.92}]}))
    models = tmp_path / "models"
    models.mkdir()
    args = ["evaluate", "classification", "--models", str(models),
            "--candidate", f"old={folders['old']}", "--compare", f"new={folders['new']}",
            "--baseline", "old", "--rule", "beat the shipped pair by 0.005",
            "--run", str(run / "classifier.pt"), "--note", "trained on a GPU"]

    # the card still ships the old pair: recording "new" would describe another ensemble
    write_card(models, {"classifier": {"checkpoints": ["runs/b.pt", "runs/c.pt"]}})
    assert main(args) == 2
    assert "member_selection" not in load_card(models)["classifier"]

    write_card(models, {"classifier": {"checkpoints": ["runs/b.pt", "runs/c2/classifier.pt"]}})
    assert main(args) == 0
    record = load_card(models)["classifier"]["member_selection"]
    assert record["chosen"] == "new" and record["baseline"] == "old"
    assert record["val_auc"] == {"old": 0.950, "new": 0.957}
    assert record["passes_per_image"] == {"old": 3, "new": 3}
    assert record["new_runs"]["c2"]["best_epoch"] == 7 and record["note"] == "trained on a GPU"
    assert record["command"].startswith("busdx evaluate classification --models")
    assert record["new_runs"]["c2"]["val_auc_training"] == 0.93
    assert "<- chosen" in capsys.readouterr().out.splitlines()[0]

    # a later round keeps this one on record
    assert main([*args[:-4], "--rule", "round two"]) == 0
    from busdx.evaluation.evidence import history

    assert load_card(models)["classifier"]["member_selection"]["rule"] == "round two"
    assert [r.results["rule"] for r in history("classifier.member_selection",
                                               models / "evidence")] == [
        "beat the shipped pair by 0.005"]



def test_a_weight_averaged_run_is_recorded_by_its_ingredients(tmp_path):
    from busdx.evaluation.card_markdown import render_history
    from busdx.evaluation.members import run_record

    run = tmp_path / "soup"
    run.mkdir()
    (run / "training.json").write_text(json.dumps({
        "command": "busdx train soup --method greedy", "wall_minutes": 0.4,
        "soup": {"method": "greedy", "val_auc": 0.9451, "ingredients": [
            {"checkpoint": "runs/a.pt", "kept": True}, {"checkpoint": "runs/b.pt", "kept": True},
            {"checkpoint": "runs/c.pt", "kept": False}]}}))
    record = run_record(run / "classifier.pt")
    assert record["val_auc_training"] == 0.9451
    assert record["soup"] == {"method": "greedy", "kept": ["runs/a.pt", "runs/b.pt"],
                              "left_out": ["runs/c.pt"]}
    selection = {"rule": "r", "val_auc": {"old": 0.95}, "chosen": "old",
                 "new_runs": {"soup": record}}
    text = render_history({"classifier": {"member_selection": selection}})
    assert ("- `soup`: greedy weight average of 2 of 3 networks, validation AUC in training "
            "0.9451, 0.4 min; `busdx train soup --method greedy`") in text
