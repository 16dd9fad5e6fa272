"""Choosing the classifier's ensemble members on validation, and recording the choice.

Each candidate ensemble is scored by ``busdx train classification --calibrate-only`` into a copy
of the models folder; this module reads those cards back, applies the rule (the shipped ensemble
stays unless a candidate beats its validation AUC by ``min_gain``) and builds the card's
``classifier.member_selection`` record. Nothing here touches the test fold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from busdx.errors import BusdxError


def option_members(name: str, candidates: Mapping[str, dict]) -> set[str]:
    """The candidates behind an option's model name in a ``--calibrate-only`` card: one
    candidate, or an ensemble of all of them ("ensemble") or of those with the inputs its name
    lists ("ensemble_both_crop")."""
    if name in candidates:
        return {name}
    inputs = set(name.split("_")[1:])
    return {n for n, c in candidates.items() if not inputs or c.get("input") in inputs}


def parse_option(key: str) -> dict[str, str]:
    """``"model=a, tta=none, contexts=0.3"`` -> ``{"model": "a", "tta": "none", ...}``."""
    parts = dict(p.split("=", 1) for p in key.split(", ") if "=" in p)
    parts.setdefault("model", key)
    parts.setdefault("tta", "none")
    return parts


@dataclass(frozen=True)
class ScoredEnsemble:
    """One candidate ensemble as ``--calibrate-only`` scored it: every candidate network averaged,
    the primary crop, with the mirror averaging (``tta``) the card ships."""

    val_auc: float
    passes: int
    checkpoints: tuple[str, ...]
    command: str | None
    tta: str = "none"

    @classmethod
    def from_card(cls, card: Mapping, where: str = "card") -> ScoredEnsemble:
        from busdx.models.contract import TTA_COST

        clf = card.get("classifier") or {}
        tta = clf.get("tta") or "none"
        candidates = clf.get("candidates") or {}
        scores = clf.get("crop_comparison_val_auc") or {}
        if not candidates or not scores:
            raise BusdxError(f"{where} holds no candidates scored by "
                             "`busdx train classification --calibrate-only`")
        context = str((clf.get("crop") or {}).get("context"))
        for key, auc in scores.items():
            parts = parse_option(key)
            if (parts["tta"] == tta and parts.get("contexts") == context
                    and option_members(parts["model"], candidates) == set(candidates)):
                views = sum(int(c.get("passes_per_crop") or 1) for c in candidates.values())
                return cls(
                    val_auc=float(auc),
                    passes=round(views * TTA_COST[tta]),
                    checkpoints=tuple(c["checkpoint"] for c in candidates.values()),
                    command=(clf.get("calibration") or {}).get("command"),
                    tta=tta,
                )
        raise BusdxError(f"{where}: no scored option averages all of {sorted(candidates)} with "
                         f"tta={tta} (two-view networks are not averaged with each other)")

    @classmethod
    def from_folder(cls, folder: str | Path) -> ScoredEnsemble:
        from busdx.evaluation.model_card import load_card

        card = load_card(folder)
        if not card:
            raise BusdxError(f"{folder} holds no release: score the candidate there with "
                             f"`busdx calibrate --out {folder}`")
        return cls.from_card(card, str(folder))


def choose(scored: Mapping[str, ScoredEnsemble], baseline: str, min_gain: float) -> str:
    """The best candidate if it beats ``baseline`` by ``min_gain`` validation AUC, else the
    baseline (ties go to what is shipped)."""
    if baseline not in scored:
        raise BusdxError(f"the baseline {baseline!r} is not among the candidates {sorted(scored)}")
    best = max(scored, key=lambda n: scored[n].val_auc)
    # a gain equal to the bar up to rounding counts
    gain = scored[best].val_auc - scored[baseline].val_auc
    return best if gain >= min_gain - 1e-12 else baseline


def run_record(checkpoint: str | Path) -> dict:
    """How a newly trained member was made, from the training.json beside its checkpoint."""
    path = Path(checkpoint)
    record_path = path.parent / "training.json"
    if not record_path.is_file():
        raise BusdxError(f"{record_path} is missing: the training run writes it beside the "
                         "checkpoint")
    record = json.loads(record_path.read_text())
    scores = [h["val_auc"] for h in record.get("history") or [] if h.get("val_auc") is not None]
    out = {"checkpoint": str(path), "command": record.get("command"),
           "val_auc_training": max(scores) if scores else None,
           "best_epoch": record.get("best_epoch"), "epochs_run": record.get("epochs_run"),
           "wall_minutes": record.get("wall_minutes"), "hardware": record.get("hardware")}
    soup = record.get("soup")
    if soup:  # a weight average (busdx train soup): no epochs, its ingredients instead
        ingredients = soup.get("ingredients") or []
        out["val_auc_training"] = soup.get("val_auc")
        out["soup"] = {"method": soup.get("method"),
                       "kept": [i["checkpoint"] for i in ingredients if i.get("kept")],
                       "left_out": [i["checkpoint"] for i in ingredients if not i.get("kept")]}
    return out


def member_selection(
    scored: Mapping[str, ScoredEnsemble],
    baseline: str,
    min_gain: float,
    rule: str,
    runs: Sequence[str | Path] = (),
    note: str | None = None,
) -> dict:
    """The card's ``classifier.member_selection``: every candidate's validation AUC and cost,
    the choice, the scoring commands, and the new runs' records."""
    ttas = {s.tta for s in scored.values()}
    if len(ttas) > 1:
        raise BusdxError("the candidates were scored with different mirror averaging "
                         f"({', '.join(f'{n}: {s.tta}' for n, s in scored.items())}): score them "
                         "alike (--calibrate-only --tta ...)")
    chosen = choose(scored, baseline, min_gain)
    record = {
        "rule": rule, "split": "validation", "min_gain": min_gain, "baseline": baseline,
        "tta": ttas.pop(),
        "passes_per_image": {n: s.passes for n, s in scored.items()},
        "val_auc": {n: s.val_auc for n, s in scored.items()},
        "chosen": chosen,
        "checkpoints": {n: list(s.checkpoints) for n, s in scored.items()},
        "commands": {n: s.command for n, s in scored.items()},
        "new_runs": {Path(r).parent.name: run_record(r) for r in runs},
    }
    if note:
        record["note"] = note
    return record
