"""Weight averages of classifiers (``busdx train soup``): batch-norm folding keeps the network,
averaging is element-wise, greedy soups keep only what does not hurt, and the soup ships like
any run (checkpoint, training record, --calibrate-only)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from busdx.errors import BusdxError
from busdx.models.classification import ClassifierSpec, build_classifier, fold_batch_norms
from busdx.training import classification as tc
from busdx.training.soup import average_state_dicts, greedy_soup, make_soup
from stand_in_models import as_if_trained


def _trained_like(seed: int, views: int = 1) -> torch.nn.Module:
    """A lite0 classifier with non-trivial batch-norm statistics, as after training."""
    torch.manual_seed(seed)
    model = build_classifier(ClassifierSpec(arch="lite0", views=views), pretrained=False)
    return as_if_trained(model).eval()


def _save(model, path, **config) -> str:
    spec = ClassifierSpec(arch="lite0", views=model.views)
    cfg = tc.ClassifierTrainConfig(arch="lite0", input="both" if model.views == 2 else "crop",
                                   **config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tc.save_checkpoint(model, spec, cfg, path, epoch=3, val_auc=0.8)
    (path.parent / "training.json").write_text(json.dumps({"command": f"train {path.parent.name}",
                                                           "best_epoch": 3}))
    return str(path)


def test_folding_batch_norms_keeps_the_output():
    model = _trained_like(0, views=2)
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    folded = fold_batch_norms(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
        bn = folded.backbone.bn1
        assert torch.all(bn.running_mean == 0) and torch.all(bn.weight == 1)
        # folding a folded network changes nothing: a rebuilt checkpoint (already folded) and a
        # trained one end up in the same form
        again = fold_batch_norms(copy.deepcopy(folded))
        for k, v in folded.state_dict().items():
            assert torch.allclose(again.state_dict()[k].float(), v.float(), atol=1e-6), k


def test_average_is_element_wise_and_counters_come_from_the_first():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0], dtype=torch.float16), "n": torch.tensor(9)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and out["w"].dtype == torch.float32
    assert out["n"] == 5
    with pytest.raises(BusdxError, match="different layers"):
        average_state_dicts([a, {"v": torch.tensor(1.0)}])
    with pytest.raises(BusdxError, match="at least one"):
        average_state_dicts([])


def test_greedy_soup_keeps_an_ingredient_only_when_the_score_does_not_drop():
    # the score prefers weights near 2: 2 alone scores best, adding 10 hurts, adding 1.5 helps
    states = [{"w": torch.tensor(2.5)}, {"w": torch.tensor(10.0)}, {"w": torch.tensor(1.5)}]
    soup, trials, kept = greedy_soup(states, lambda s: -abs(float(s["w"]) - 2.0))
    assert kept == [True, False, True]
    assert float(soup["w"]) == pytest.approx(2.0)
    assert trials == pytest.approx([-0.5, -4.25, 0.0])


def test_a_uniform_soup_is_the_folded_mean_and_ships_like_a_run(tmp_path):
    from busdx.training.classification import load_checkpoint

    a, b = _trained_like(1), _trained_like(2)
    paths = [_save(a, tmp_path / "a" / "classifier.pt"), _save(b, tmp_path / "b" / "classifier.pt")]
    scores = []
    result = make_soup(paths, "uniform", tmp_path / "soup", lambda m: scores.append(m) or 0.7,
                       command="busdx train soup ...")
    assert result.val_auc == 0.7 and len(scores) == 1
    soup, ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["spec"]["arch"] == "lite0" and ckpt["val_auc"] == 0.7
    fa, fb = (fold_batch_norms(copy.deepcopy(m)).state_dict() for m in (a, b))
    w = "backbone.conv_stem.weight"
    assert torch.allclose(soup.state_dict()[w], (fa[w] + fb[w]) / 2, atol=1e-6)
    record = json.loads((tmp_path / "soup" / "training.json").read_text())
    assert record["command"] == "busdx train soup ..."
    assert record["soup"]["method"] == "uniform" and record["soup"]["val_auc"] == 0.7
    assert [i["training"]["command"] for i in record["soup"]["ingredients"]] == ["train a",
                                                                                 "train b"]
    assert all(i["kept"] for i in record["soup"]["ingredients"])


def test_a_soup_of_one_network_is_that_network(tmp_path):
    a = _trained_like(3, views=2)
    path = _save(a, tmp_path / "a" / "classifier.pt")
    result = make_soup([path], "greedy", tmp_path / "soup", lambda m: 0.5)
    soup, _ = tc.load_checkpoint(result.checkpoint)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(soup(x), a(x), atol=1e-5)


def test_unlike_networks_are_refused(tmp_path):
    crop = _save(_trained_like(1), tmp_path / "a" / "classifier.pt")
    two_view = _save(_trained_like(2, views=2), tmp_path / "b" / "classifier.pt")
    other_context = _save(_trained_like(3), tmp_path / "c" / "classifier.pt", context=0.5)
    with pytest.raises(BusdxError, match="different network"):
        make_soup([crop, two_view], "uniform", tmp_path / "soup", lambda m: 0.5)
    with pytest.raises(BusdxError, match="context"):
        make_soup([crop, other_context], "uniform", tmp_path / "soup", lambda m: 0.5)
    # validated elsewhere: the soup's validation score would include training images
    other_split = _save(_trained_like(4), tmp_path / "d" / "classifier.pt", val_fold=2)
    with pytest.raises(BusdxError, match="val_fold"):
        make_soup([crop, other_split], "uniform", tmp_path / "soup", lambda m: 0.5)
    with pytest.raises(BusdxError, match="twice"):
        make_soup([crop, crop], "uniform", tmp_path / "soup", lambda m: 0.5)
    with pytest.raises(BusdxError, match="unknown soup"):
        make_soup([crop], "mean", tmp_path / "soup", lambda m: 0.5)
    assert not (tmp_path / "soup").exists()


def test_the_cli_scores_a_soup_on_validation_and_refuses_missing_checkpoints(fixtures_root,
                                                                              tmp_path):
    from busdx.cli.main import main

    paths = [_save(_trained_like(s), tmp_path / f"r{s}" / "classifier.pt") for s in (1, 2)]
    out = tmp_path / "soup"
    assert main(["train", "soup", "--data", str(fixtures_root), "--test-fold", "1",
                 "--cache", str(tmp_path / "cache"), "--method", "greedy", "--out", str(out),
                 "--checkpoint", *paths]) == 0
    record = json.loads((out / "training.json").read_text())
    first = record["soup"]["ingredients"][0]
    assert first["kept"] and 0.0 <= first["soup_val_auc"] <= 1.0
    assert record["command"].startswith("busdx train soup")
    assert main(["train", "soup", "--data", str(fixtures_root), "--out", str(tmp_path / "x"),
                 "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert not (tmp_path / "x").exists()


def test_the_model_card_lists_a_soups_ingredients_and_their_runs():
    from busdx.evaluation.card_markdown import render_history

    soup = {"method": "greedy", "val_auc": 0.945, "validation_crops": "ground-truth masks",
            "ingredients": [
                {"checkpoint": "runs/a/classifier.pt", "val_auc_training": 0.944,
                 "soup_val_auc": 0.944, "kept": True, "training": {"command": "busdx train a"}},
                {"checkpoint": "runs/b/classifier.pt", "val_auc_training": 0.93,
                 "soup_val_auc": 0.935, "kept": False, "training": {"command": "busdx train b"}},
            ]}
    member = {"checkpoint": "runs/soup/classifier.pt", "arch": "lite1", "epoch": None,
              "val_auc_training": 0.945, "config": {"input": "both"},
              "training": {"command": "busdx train soup --method greedy", "soup": soup}}
    text = render_history({"classifier": {"members": [member]}})
    assert "(lite1, input both, weight average, validation AUC in training 0.945)" in text
    assert "a greedy weight average (model soup) of 1 network," in text
    assert "- kept: `runs/a/classifier.pt`" in text and "`busdx train a`" in text
    assert "- left out: `runs/b/classifier.pt` (validation AUC in training 0.9300, soup with it " \
           "0.9350)" in text
