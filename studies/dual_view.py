"""A dual-view capture (a lesion's two planes side by side, as a scanner shows them): what does
reading it whole cost, and does splitting it give the lesion reading back?

BUS-BRA's -l/-r images were cut from such captures. Every VALIDATION lesion with both halves
(patient-wise, fold 5 not read) is put back together: the halves side by side, tops aligned, a
black gap between them and a black frame around them (pixel values 0-3 of 255, a compressed
capture's black). Each capture is read three ways through the product's own analysis:

- whole: the capture as one image (what a user gets without ``--dual-view``);
- split: ``analyze(pane=...)`` on both panes, read as one lesion (busdx.inference.lesion), as
  the page's dual-view box, ``busdx predict --dual-view`` and ``/api/analyze?pane=`` do;
- halves: the two original files read as one lesion (what the card's lesion rows score).

Per reading: the AUC over lesions and the calls at the frozen thresholds (the per-image one for
whole captures, the lesion one for the other two); and how many captures split into exactly
their two halves. Descriptive: no model or threshold is chosen by it.

    python studies/dual_view.py --data ../shared/data/busbra --out reports/studies
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("dual_view")

SEED = 0
GAP = 16  # pixels of black between the panes
FRAME = 24  # pixels of black around them


def capture(left: np.ndarray, right: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h = max(left.shape[0], right.shape[0])
    w = left.shape[1] + GAP + right.shape[1]
    out = (rng.integers(0, 4, (h + 2 * FRAME, w + 2 * FRAME)) / 255).astype(np.float32)
    out[FRAME:FRAME + left.shape[0], FRAME:FRAME + left.shape[1]] = left
    x = FRAME + left.shape[1] + GAP
    out[FRAME:FRAME + right.shape[0], x:x + right.shape[1]] = right
    return out


def lesion_row(i: int, lesion: str, a, b, models, baseline=None) -> dict:
    """The ``i``-th validation lesion (halves ``a`` and ``b``) read whole, split and as its two
    files (the capture's black is seeded by ``i``)."""
    from _runner import plain_analysis

    from busdx.inference.decode import decode
    from busdx.inference.lesion import read_lesion
    from busdx.inference.pipeline import analyze
    from busdx.inference.scan_area import split_dual_view

    threshold = models.settings.lesion_threshold
    left, right = (decode(str(r.image_path)).image for r in (a, b))
    image = capture(left, right, np.random.default_rng([SEED, i]))
    panes = split_dual_view(image)
    exact = all(p.crop(image).shape == half.shape and np.array_equal(p.crop(image), half)
                for p, half in zip(panes, (left, right), strict=True))
    whole = analyze(image, models, render_overlays=False)
    split = read_lesion([analyze(image, models, render_overlays=False, pane=p)
                         for p in ("left", "right")], threshold)
    apart = read_lesion([plain_analysis(r, h, models, baseline)
                         for r, h in ((a, left), (b, right))], threshold)
    return {"lesion": lesion, "label": a.label, "split_exact": exact,
            "whole": whole.probability, "whole_malignant": whole.malignant_at_threshold,
            "split": split.probability, "split_malignant": split.malignant_at_threshold,
            "halves": apart.probability, "halves_malignant": apart.malignant_at_threshold}


def collect(data: str, models_dir: str | None, threads: int, baseline=None) -> dict:
    from _runner import lesion_pairs, validation_records
    from tqdm import tqdm

    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    pairs = lesion_pairs(validation_records(data))
    rows = [lesion_row(i, lesion, a, b, models, baseline)
            for i, (lesion, a, b) in enumerate(tqdm(pairs, desc="validation lesions"))]
    return {"threshold": models.settings.threshold,
            "lesion_threshold": models.settings.lesion_threshold,
            "model_version": models.version, "rows": rows}


def summarise(collected: dict) -> dict:
    from busdx.evaluation.classification import roc_auc

    rows = collected["rows"]
    y = np.array([r["label"] for r in rows])
    readings = {}
    for name in ("whole", "split", "halves"):
        p = np.array([r[name] for r in rows])
        call = np.array([r[f"{name}_malignant"] for r in rows])
        readings[name] = {
            "auc": roc_auc(y, p),
            "sensitivity": float(call[y == 1].mean()),
            "specificity": float((~call[y == 0]).mean()),
            "calls_unlike_halves": int((call != np.array([r["halves_malignant"]
                                                          for r in rows])).sum()),
        }
    readings["whole"]["threshold"] = collected["threshold"]
    for name in ("split", "halves"):
        readings[name]["threshold"] = collected["lesion_threshold"]
    return {
        "question": "a dual-view capture read whole, or split into its panes and read as one "
                    "lesion: how does each compare with the lesion's two original images?",
        "split": "validation (fold 5 not read)",
        "lesions": len(rows), "malignant": int(y.sum()),
        "captures_split_exactly": int(sum(r["split_exact"] for r in rows)),
        "capture": {"gap_px": GAP, "frame_px": FRAME},
        "model_version": collected["model_version"],
        "readings": readings,
    }


def describe(result: dict, args, out: Path) -> None:
    log.info("%d lesions, %d captures split into exactly their halves", result["lesions"],
             result["captures_split_exactly"])
    for name, c in result["readings"].items():
        log.info("%-7s AUC %.3f  sensitivity %.3f  specificity %.3f  calls unlike the halves' %d",
                 name, c["auc"], c["sensitivity"], c["specificity"], c["calls_unlike_halves"])


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "dual_view", lambda a: collect(a.data, a.models, a.threads),
                     summarise, describe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
