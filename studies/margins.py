"""What does a black frame around the scan do to the product, and does cutting it off undo it?

BUS-BRA's images are cut to the scan area; a screen capture or another system's export often
is not. Each VALIDATION image (patient-wise, fold 5 not read) is put in a black frame (pixel
values 0-3 of 255, as a compressed capture's black) of a few shapes, and goes through the
product's own analysis twice: as served (``busdx.inference.analyze``, which cuts the frame off:
busdx.inference.scan_area) and with the cut turned off (``trim_margins=False``). Per condition:
the AUC, sensitivity and specificity at the frozen threshold, how many calls flip against the
unframed image, and how far the calibrated probability moves. A frame on the bottom edge alone
is not cut (a faded far field looks the same), and the study shows what that costs.

Descriptive: no model or threshold is chosen by it.

    python studies/margins.py --data ../shared/data/busbra --out reports/studies
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("margins")

SEED = 0
# (top, bottom, left, right) as fractions of the image's height and width
FRAMES = {
    "none": (0.0, 0.0, 0.0, 0.0),
    "sides 25%": (0.0, 0.0, 0.25, 0.25),
    "all edges 15%": (0.15, 0.15, 0.15, 0.15),
    "top 10%, sides 30%": (0.10, 0.0, 0.30, 0.30),
    "bottom 20% only": (0.0, 0.20, 0.0, 0.0),
}


def frame(image: np.ndarray, edges: tuple[float, float, float, float],
          rng: np.random.Generator) -> np.ndarray:
    """``image`` in a black frame whose edges are the given fractions of its size."""
    h, w = image.shape
    top, bottom = round(edges[0] * h), round(edges[1] * h)
    left, right = round(edges[2] * w), round(edges[3] * w)
    out = (rng.integers(0, 4, (top + h + bottom, left + w + right)) / 255).astype(np.float32)
    out[top:top + h, left:left + w] = image
    return out


def image_rows(i: int, record, models, baseline=None) -> dict[str, dict]:
    """The ``i``-th validation image's row under every condition (the frame's noise is seeded
    by ``i``)."""
    from _runner import plain_analysis

    from busdx.inference.decode import decode
    from busdx.inference.pipeline import analyze

    image = decode(str(record.image_path)).image
    rows = {}
    for name, edges in FRAMES.items():
        framed = frame(image, edges, np.random.default_rng([SEED, i]))
        for trim in (True, False) if name != "none" else (True,):
            # no frame: the image itself, whose analysis the studies share
            a = (plain_analysis(record, image, models, baseline) if name == "none"
                 else analyze(framed, models, render_overlays=False, trim_margins=trim))
            key = name if name == "none" else f"{name}, {'cut' if trim else 'not cut'}"
            rows[key] = {"id": record.id, "label": record.label, "probability": a.probability,
                         "malignant": a.malignant_at_threshold, "cut": a.scan_area is not None,
                         "lesion_found": a.lesion_found}
    return rows


def recorded_image(collected: dict, i: int) -> dict[str, dict]:
    """The ``i``-th image's rows as ``image_rows`` gives them, from a collected record."""
    return {key: part[i] for key, part in collected["rows"].items()}


def collect(data: str, models_dir: str | None, threads: int, baseline=None) -> dict:
    from _runner import validation_records
    from tqdm import tqdm

    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    rows: dict[str, list[dict]] = {}
    for i, r in enumerate(tqdm(validation_records(data), desc="validation images")):
        for key, row in image_rows(i, r, models, baseline).items():
            rows.setdefault(key, []).append(row)
    return {"threshold": models.settings.threshold, "model_version": models.version,
            "rows": rows}


def summarise(collected: dict) -> dict:
    from busdx.evaluation.classification import roc_auc

    rows = collected["rows"]
    base = rows["none"]
    y = np.array([r["label"] for r in base])
    base_p = np.array([r["probability"] for r in base])
    base_call = np.array([r["malignant"] for r in base])
    base_found = np.array([r.get("lesion_found", True) for r in base])
    out = {}
    for name, part in rows.items():
        p = np.array([r["probability"] for r in part])
        call = np.array([r["malignant"] for r in part])
        found = np.array([r.get("lesion_found", True) for r in part])
        out[name] = {
            "auc": roc_auc(y, p),
            "sensitivity": float(call[y == 1].mean()),
            "specificity": float((~call[y == 0]).mean()),
            "calls_flipped": int((call != base_call).sum()),
            # of those, how many because the lesion found in the image was not found framed
            "calls_flipped_to_no_lesion": int(((call != base_call) & base_found & ~found).sum()),
            "mean_abs_probability_change": float(np.abs(p - base_p).mean()),
            "images_cut": int(sum(r["cut"] for r in part)),
        }
    return {
        "question": "what does a black frame around the scan do to the calls, and does cutting "
                    "it off (busdx.inference.scan_area) undo it?",
        "split": "validation (fold 5 not read)",
        "n": len(base), "malignant": int(y.sum()),
        "model_version": collected["model_version"], "threshold": collected["threshold"],
        "frames": {k: list(v) for k, v in FRAMES.items()},
        "conditions": out,
    }


def describe(result: dict, args, out: Path) -> None:
    for name, c in result["conditions"].items():
        log.info("%-32s AUC %.3f  sensitivity %.3f  specificity %.3f  flipped %3d  cut %3d",
                 name, c["auc"], c["sensitivity"], c["specificity"], c["calls_flipped"],
                 c["images_cut"])


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "margins", lambda a: collect(a.data, a.models, a.threads),
                     summarise, describe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
