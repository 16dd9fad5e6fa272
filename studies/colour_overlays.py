"""Colour inside the scan: what does a Doppler box or an elastography map cost the call, and
does the colour warning (busdx.inference.quality.colour_mask) say so when, and only when, it
should?

Every training image is grey B-mode: BUS-BRA's 1,875 images are 8-bit grey. Scanners and
exports from other hospitals also give colour: a colour or power Doppler box over the lesion, a
strain elastography map blended over it, a grey map tinted sepia, or simply a grey image stored
as colour. The product turns every image into grey (luma), so colour reaches the networks as
brightness they never learned. The warning's levels are not fitted by this study, but one was
added because of it: ``CHROMA`` (a pixel's channels differ by more than this share of the full
scale) and ``COLOUR_SHARE`` (more than this share of the scan in colour is warned) were fixed
before its first run, which warned 176 of the 226 tinted images although the tint flipped only
6 calls; ``SATURATION`` (the channels also differ by more than this share of the brightest, so
that a pale tint is not colour) was added then, and the study run again.

Every VALIDATION image (patient-wise, fold 5 not read) is read through the product's own
analysis as:

- plain: the image file itself (the reference);
- colour JPEG: the grey image stored as an RGB JPEG (quality 85), which must not be warned;
- tinted: the grey map tinted sepia, as some scanners show B-mode;
- Doppler: a colour-flow box over the lesion (its ground-truth box grown by ``BOX_GROW`` on
  every side), ``FLOW`` of the box covered by red and blue vessels placed at random,
  independently of the label, with the box's outline in grey;
- elastography: the same box blended half and half with a smooth random strain map in a
  blue-green-red scale.

Per condition: the AUC, sensitivity and specificity at the frozen threshold, the calls that
flip against the plain image (and how many of those were warned), how many images were warned
and filled, and the share of the scan in colour. The Doppler and elastography images are read
as served (thin colour filled in from the grey around it: rule Y in docs/selection_rules.md)
and unfilled, on two drawing seeds; ``rule_y`` scores the rule's conditions on both.
Descriptive: no model, threshold or level is chosen by it.

    python studies/colour_overlays.py --data ../shared/data/busbra --out reports/studies
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("colour_overlays")

SEED = 0
RULE_Y_SEEDS = (0, 1)  # drawing seeds: 0 was read before rule Y was written, 1 was not
BOX_GROW = 0.4  # the colour box around the lesion's box, grown by this share of its size
FLOW = 0.10  # the share of the Doppler box that shows flow
JPEG_QUALITY = 85
SEPIA = (1.0, 0.85, 0.65)  # channel gains of the tinted grey map
CONDITIONS = ("plain", "colour_jpeg", "tinted", "doppler", "elastography")
OVERLAYS = ("doppler", "elastography")


def colour_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the lesion's box grown by BOX_GROW, inside the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    dy = int(BOX_GROW * (ys.max() - ys.min() + 1))
    dx = int(BOX_GROW * (xs.max() - xs.min() + 1))
    return (max(0, ys.min() - dy), min(h, ys.max() + 1 + dy),
            max(0, xs.min() - dx), min(w, xs.max() + 1 + dx))


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def tinted(grey: np.ndarray) -> np.ndarray:
    return np.clip(grey[..., None] * np.array(SEPIA), 0, 255).astype(np.uint8)


def doppler(grey: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator
            ) -> np.ndarray:
    """Vessels (winding strokes 2 to 5 pixels wide, red towards the probe, blue away) over
    FLOW of the box, as colour flow paints them over the grey."""
    top, bottom, left, right = box
    rgb = grey_rgb(grey)
    h, w = bottom - top, right - left
    yy, xx = np.mgrid[:h, :w]
    flow = np.zeros((h, w), bool)
    towards = np.zeros((h, w), bool)
    while flow.mean() < FLOW:
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        angle, radius, sign = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.5), rng.random() < 0.5
        for _ in range(int(rng.integers(8, 30))):
            vessel = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
            flow |= vessel
            towards[vessel] = sign
            angle += rng.normal(0, 0.35)
            y, x = y + 2 * np.sin(angle), x + 2 * np.cos(angle)
    speed = rng.uniform(0.5, 1.0, (h, w))
    red = np.stack([155 + 100 * speed, 60 * speed, 20 * speed], axis=2)
    blue = np.stack([20 * speed, 60 + 120 * speed, 155 + 100 * speed], axis=2)
    inside = rgb[top:bottom, left:right]
    inside[flow] = np.where(towards[flow, None], red[flow], blue[flow]).astype(np.uint8)
    _outline(rgb, box)
    return rgb


def elastography(grey: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator
                 ) -> np.ndarray:
    """A smooth strain field in a blue-green-red scale, blended half and half over the box."""
    from PIL import Image

    top, bottom, left, right = box
    rgb = grey_rgb(grey).astype(np.float64)
    h, w = bottom - top, right - left
    coarse = rng.random((4, 4)).astype(np.float32)
    strain = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC))
    strain = np.clip(strain, 0.0, 1.0)
    scale = np.stack([np.clip(2 * strain - 1, 0, 1), 1 - np.abs(2 * strain - 1),
                      np.clip(1 - 2 * strain, 0, 1)], axis=2) * 255
    rgb[top:bottom, left:right] = 0.5 * rgb[top:bottom, left:right] + 0.5 * scale
    rgb = rgb.astype(np.uint8)
    _outline(rgb, box)
    return rgb


def _outline(rgb: np.ndarray, box: tuple[int, int, int, int]) -> None:
    top, bottom, left, right = box
    rgb[top, left:right] = rgb[bottom - 1, left:right] = 200
    rgb[top:bottom, left] = rgb[top:bottom, right - 1] = 200


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def image_row(i: int, record, models, baseline=None) -> dict:
    """The ``i``-th validation image as its file, stored as colour, tinted, and under the
    overlays of every drawing seed (seeded by ``i``), filled and not."""
    from PIL import Image

    from busdx.inference.pipeline import analyze

    grey = np.asarray(Image.open(record.image_path).convert("L"))
    box = colour_box(np.asarray(Image.open(record.mask_path).convert("L")) > 0)
    sources = {"plain": record.image_path.read_bytes(), "colour_jpeg": _jpeg(grey_rgb(grey)),
               "tinted": tinted(grey)}
    for seed in RULE_Y_SEEDS:
        rng = np.random.default_rng([seed, i])
        suffix = "" if seed == SEED else f"_seed{seed}"
        sources[f"doppler{suffix}"] = doppler(grey, box, rng)
        sources[f"elastography{suffix}"] = elastography(grey, box, rng)
    row = {"image": record.image_path.name, "label": record.label}
    for name, source in sources.items():
        fills = (True, False) if name.startswith(OVERLAYS) else (True,)
        for fill in fills:
            # the file itself: the analysis the studies share
            a = (baseline.analysis(record, models) if name == "plain" and baseline is not None
                 else analyze(source, models, render_overlays=False, fill_colour=fill))
            check = a.input_check
            key = name if fill else f"{name}_unfilled"
            row[key] = a.probability
            row[f"{key}_malignant"] = a.malignant_at_threshold
            row[f"{key}_colour"] = check.colour if check else 0.0
            row[f"{key}_warned"] = bool(check and "colour" in check.outside)
            row[f"{key}_filled"] = bool(check and check.colour_filled)
    return row


def collect(data: str, models_dir: str | None, threads: int, baseline=None) -> dict:
    from _runner import validation_records
    from tqdm import tqdm

    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    images = [image_row(i, r, models, baseline)
              for i, r in enumerate(tqdm(validation_records(data), desc="validation images"))]
    return {"threshold": models.settings.threshold, "model_version": models.version,
            "images": images}


def _reading(images: list[dict], name: str) -> dict:
    from busdx.evaluation.classification import roc_auc

    y = np.array([r["label"] for r in images])
    plain = np.array([r["plain_malignant"] for r in images])
    p = np.array([r[name] for r in images])
    call = np.array([r[f"{name}_malignant"] for r in images])
    share = np.array([r[f"{name}_colour"] for r in images])
    return {
        "auc": roc_auc(y, p), "sensitivity": float(call[y == 1].mean()),
        "specificity": float((~call[y == 0]).mean()),
        "calls_flipped": int((call != plain).sum()),
        "calls_flipped_warned": int(sum(r[f"{name}_warned"] for r, c, p0
                                        in zip(images, call, plain, strict=True) if c != p0)),
        "mean_probability_change": float(np.mean(p - np.array([r["plain"] for r in images]))),
        "warned": int(sum(r[f"{name}_warned"] for r in images)),
        "filled": int(sum(r[f"{name}_filled"] for r in images)),
        "colour_share": {"median": float(np.median(share)), "min": float(share.min()),
                         "max": float(share.max())},
    }


def rule_y(images: list[dict]) -> dict:
    """Rule Y's four conditions on each drawing seed (docs/selection_rules.md)."""
    seeds = {}
    for seed in RULE_Y_SEEDS:
        suffix = "" if seed == SEED else f"_seed{seed}"
        served, unfilled = (_reading(images, f"doppler{suffix}{k}") for k in ("", "_unfilled"))
        elasto = _reading(images, f"elastography{suffix}")
        seeds[f"seed{seed}"] = {
            "doppler_served": served, "doppler_unfilled": unfilled,
            "elastography_filled": elasto["filled"],
            "conditions": {
                "flips_at_most_half": served["calls_flipped"] <= unfilled["calls_flipped"] / 2,
                "auc_not_lower": served["auc"] >= unfilled["auc"],
                "no_elastography_filled": elasto["filled"] == 0,
                "grey_unchanged": all(_reading(images, n)["filled"] == 0
                                      for n in ("plain", "colour_jpeg", "tinted")),
            },
        }
    return {"rule": "docs/selection_rules.md, rule Y", "seeds": seeds,
            "ships": all(all(s["conditions"].values()) for s in seeds.values())}


def summarise(collected: dict) -> dict:
    from busdx.inference.quality import CHROMA, COLOUR_SHARE, SATURATION

    images = collected["images"]
    y = np.array([r["label"] for r in images])
    readings = {name: _reading(images, name) for name in CONDITIONS}
    readings.update({f"{name}_unfilled": _reading(images, f"{name}_unfilled")
                     for name in OVERLAYS})
    return {
        "question": "colour inside the scan (Doppler, elastography, a tinted map, a grey image "
                    "stored as colour): what does it cost the call, and is it warned?",
        "split": "validation (fold 5 not read)",
        "images": len(images), "malignant": int(y.sum()),
        "threshold": collected["threshold"],
        "levels": {"chroma": CHROMA, "saturation": SATURATION, "colour_share": COLOUR_SHARE,
                   "history": "chroma and colour_share fixed before the first run; saturation "
                              "added after it warned 176 of 226 tinted images (6 calls "
                              "flipped); not fitted"},
        "drawing": {"box_grow": BOX_GROW, "flow": FLOW, "jpeg_quality": JPEG_QUALITY,
                    "sepia": list(SEPIA)},
        "model_version": collected["model_version"],
        "readings": readings,
        "rule_y": rule_y(images),
    }


def describe(result: dict, args, out: Path) -> None:
    log.info("%d validation images with colour in the scan", result["images"])
    for name, c in result["readings"].items():
        log.info("%-21s AUC %.3f  sensitivity %.3f  specificity %.3f  flipped %3d (%d warned)  "
                 "mean change %+.3f  warned %3d  filled %3d  colour share median %.3f (max %.3f)",
                 name, c["auc"], c["sensitivity"], c["specificity"], c["calls_flipped"],
                 c["calls_flipped_warned"], c["mean_probability_change"], c["warned"],
                 c["filled"], c["colour_share"]["median"], c["colour_share"]["max"])
    y = result["rule_y"]
    for seed, r in y["seeds"].items():
        log.info("rule Y, %s: Doppler served flips %d (AUC %.3f), unfilled %d (AUC %.3f); "
                 "elastography filled %d; conditions %s", seed,
                 r["doppler_served"]["calls_flipped"], r["doppler_served"]["auc"],
                 r["doppler_unfilled"]["calls_flipped"], r["doppler_unfilled"]["auc"],
                 r["elastography_filled"], r["conditions"])
    log.info("rule Y ships: %s", y["ships"])


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "colour_overlays", lambda a: collect(a.data, a.models, a.threads),
                     summarise, describe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
