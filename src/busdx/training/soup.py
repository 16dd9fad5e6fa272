"""Weight averages ("model soups", Wortsman et al., ICML 2022) of classifiers fine-tuned from the
same pretrained weights on the same split.

Networks fine-tuned from one starting point tend to stay in one basin of the loss, so the mean
of their weights is itself a good network: it costs one network's time and size at inference,
yet, like an ensemble, it smooths out each run's luck. Batch norms are folded into their
convolutions first (:func:`busdx.models.classification.fold_batch_norms`), so that runs rebuilt
from an exported graph and ordinary checkpoints average alike, and so that each run's own
running statistics travel with its weights.

Two recipes: ``uniform`` (the mean of all ingredients) and ``greedy`` (ingredients in the order
given -- best validation AUC first -- each kept only if the soup's validation AUC does not drop).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from busdx.errors import BusdxError
from busdx.models.classification import ClassifierSpec, build_classifier, fold_batch_norms

log = logging.getLogger(__name__)

METHODS = ("uniform", "greedy")
# what must agree for weights of different runs to be averaged, and for the soup to be fed as
# each ingredient was
SAME_CONFIG = ("arch", "input", "size", "context", "split_seed", "val_fold")


@dataclass(frozen=True)
class Ingredient:
    checkpoint: str
    val_auc_training: float | None  # what its training run logged
    # greedy only: the soup's validation AUC with this ingredient added (the first: alone)
    soup_val_auc: float | None
    kept: bool


@dataclass
class SoupResult:
    checkpoint: Path
    method: str
    ingredients: list[Ingredient]
    val_auc: float


def average_state_dicts(states: Sequence[dict]) -> dict:
    """The element-wise mean of floating tensors (in float32); other tensors (counters) are
    taken from the first."""
    if not states:
        raise BusdxError("a soup needs at least one ingredient")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys:
            raise BusdxError("the ingredients' networks have different layers")
    out = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            out[k] = torch.stack([s[k].float() for s in states]).mean(0)
        else:
            out[k] = first.clone()
    return out


def folded_state(checkpoint: dict) -> dict:
    """The checkpoint's weights with batch norms folded, in float32."""
    model = build_classifier(ClassifierSpec(**checkpoint["spec"]), pretrained=False)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in checkpoint["state_dict"].items()})
    return fold_batch_norms(model.eval()).state_dict()


def check_compatible(checkpoints: Sequence[dict], names: Sequence[str]) -> None:
    """Refuse ingredients that differ in network or in what they were fed."""
    first, first_name = checkpoints[0], names[0]
    if not first["spec"]["arch"].startswith("lite"):
        raise BusdxError(f"{first_name}: only EfficientNet-Lite classifiers can be averaged")
    for ckpt, name in zip(checkpoints[1:], names[1:], strict=True):
        if ckpt["spec"] != first["spec"]:
            raise BusdxError(f"{name} is a different network from {first_name}: "
                             f"{ckpt['spec']} against {first['spec']}")
        for key in SAME_CONFIG:
            if ckpt["config"].get(key) != first["config"].get(key):
                raise BusdxError(f"{name} was trained with {key}={ckpt['config'].get(key)!r}, "
                                 f"{first_name} with {first['config'].get(key)!r}")


def greedy_soup(
    states: Sequence[dict], score: Callable[[dict], float]
) -> tuple[dict, list[float], list[bool]]:
    """Greedy soup over ``states`` (best first): each is kept if the soup's ``score`` with it is
    at least the soup's without it. Returns the soup, the soup's score as each was tried (the
    first: alone) and which were kept."""
    kept_states = [states[0]]
    best = score(states[0])
    trials, kept = [best], [True]
    for state in states[1:]:
        trial = score(average_state_dicts([*kept_states, state]))
        trials.append(trial)
        kept.append(trial >= best)
        if kept[-1]:
            kept_states.append(state)
            best = trial
    return average_state_dicts(kept_states), trials, kept


def make_soup(
    paths: Sequence[str | Path],
    method: str,
    out_dir: str | Path,
    score: Callable[[torch.nn.Module], float],
    command: str = "",
) -> SoupResult:
    """Average the classifier checkpoints at ``paths`` (best first for ``greedy``) into
    ``out_dir``/classifier.pt, scored by ``score`` (validation AUC of a network); a
    ``training.json`` beside it records the ingredients, each with its own training record, so
    that ``train classification --calibrate-only`` can ship the soup like any run."""
    from busdx.training.classification import (
        ClassifierTrainConfig,
        load_checkpoint,
        recorded_config,
        save_checkpoint,
    )
    from busdx.training.common import hardware_description

    if method not in METHODS:
        raise BusdxError(f"unknown soup {method!r}; choose one of {METHODS}")
    names = [str(p) for p in paths]
    if len(set(names)) != len(names):
        raise BusdxError("an ingredient is named twice")
    start = time.monotonic()
    checkpoints = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    check_compatible(checkpoints, names)
    spec = ClassifierSpec(**checkpoints[0]["spec"])
    states = [folded_state(c) for c in checkpoints]

    def network(state: dict) -> torch.nn.Module:
        model = build_classifier(spec, pretrained=False)
        model.load_state_dict(state)
        return model.eval()

    def scored(state: dict) -> float:
        return float(score(network(state)))

    if method == "uniform":
        soup = average_state_dicts(states)
        val_auc = scored(soup)
        ingredients = [Ingredient(n, c.get("val_auc"), None, True)
                       for n, c in zip(names, checkpoints, strict=True)]
    else:
        soup, trials, kept = greedy_soup(states, scored)
        val_auc = max(t for t, k in zip(trials, kept, strict=True) if k)
        ingredients = [Ingredient(n, c.get("val_auc"), t, k)
                       for n, c, t, k in zip(names, checkpoints, trials, kept, strict=True)]
    for ing in ingredients:
        log.info("ingredient %s (validation AUC in training %s): soup AUC with it %s, %s",
                 ing.checkpoint, ing.val_auc_training, ing.soup_val_auc,
                 "kept" if ing.kept else "left out")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "classifier.pt"
    config = dict(checkpoints[0]["config"])
    # the recipe the ingredients shared, as any run's checkpoint records it
    save_checkpoint(network(soup), spec, ClassifierTrainConfig.from_record(config), checkpoint,
                    epoch=None, val_auc=val_auc)
    record = {
        "command": command,
        "config": recorded_config(config),
        "soup": {
            "method": method,
            "folded_batch_norms": True,
            "val_auc": val_auc,
            "validation_crops": "ground-truth masks, no jitter",
            "ingredients": [
                {**asdict(ing), "training": _training_record(Path(ing.checkpoint))}
                for ing in ingredients
            ],
        },
        "wall_minutes": round((time.monotonic() - start) / 60, 1),
        "hardware": hardware_description("cpu", torch.get_num_threads()),
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s soup of %d of %d networks: validation AUC %.4f -> %s", method,
             sum(i.kept for i in ingredients), len(ingredients), val_auc, checkpoint)
    load_checkpoint(checkpoint)  # it must load like any run's checkpoint
    return SoupResult(checkpoint, method, ingredients, val_auc)


def _training_record(checkpoint: Path) -> dict | None:
    """The command and outcome of the run that trained ``checkpoint`` (its training.json)."""
    path = checkpoint.parent / "training.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {k: record.get(k) for k in ("command", "best_epoch", "wall_minutes", "hardware", "soup")
            if record.get(k) is not None}
