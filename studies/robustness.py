"""How do the bundled models hold up when images look as another scanner or export makes them?

Images from other hospitals differ in gain and dynamic range (gamma, contrast, brightness),
resolution and smoothing (blur, down-sampling), speckle, file compression (JPEG), and pixel
count (finer sampling of the same anatomy, which should change nothing). Each
condition below is applied to every VALIDATION image (patient-wise, fold 5 held out), which then
goes through the product's own analysis (``busdx.inference.analyze``: segment, crop, classify,
calibrate, frozen threshold). Per condition the study records the AUC, sensitivity and
specificity at the frozen threshold, the outline's Dice against the ground truth, how far the
calibrated probability moves from the unperturbed image's, and how many calls flip; and what a
site whose images all look like that would get from recalibrating on them
(``busdx evaluate external --recalibrate``): the refit operating point's sensitivity and
specificity, out of fold over patient folds.

It is descriptive: no model is chosen by it, and the test fold is not read. A condition is
flagged when the AUC drops by more than 0.02 or the sensitivity by more than 0.05 from the
unperturbed images -- there the product should not be trusted without local validation
(``busdx evaluate external``).

    python studies/robustness.py --data ../shared/data/busbra --out reports/studies
    python studies/robustness.py --compare BEFORE.json AFTER.json --name robustness_tta
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("robustness")

AUC_DROP = 0.02
SENSITIVITY_DROP = 0.05
SEED = 0


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str
    strength: float

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray | bytes:
        """The perturbed image: float32 in [0, 1], or the bytes of a JPEG file."""
        return PERTURB[self.kind](image, self.strength, rng)


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def gamma(image: np.ndarray, g: float, rng) -> np.ndarray:
    return _clip(np.power(image, g))


def contrast(image: np.ndarray, c: float, rng) -> np.ndarray:
    mean = float(image.mean())
    return _clip(mean + c * (image - mean))


def brightness(image: np.ndarray, b: float, rng) -> np.ndarray:
    return _clip(image + b)


def blur(image: np.ndarray, sigma: float, rng) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return _clip(gaussian_filter(image, sigma))


def speckle(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise, the statistics of ultrasound speckle."""
    return _clip(image * (1.0 + s * rng.standard_normal(image.shape)))


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.rint(_clip(image) * 255.0).astype(np.uint8))


def downscale(image: np.ndarray, factor: float, rng) -> np.ndarray:
    """Down-sampled by ``factor`` and back: a lower-resolution scanner or export."""
    from PIL import Image

    h, w = image.shape
    small = _pil(image).resize((max(8, round(w * factor)), max(8, round(h * factor))),
                               Image.Resampling.BILINEAR)
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0


def upsample(image: np.ndarray, factor: float, rng) -> np.ndarray:
    """Up-sampled by ``factor``: the same anatomy from a scanner or export with more pixels;
    nothing is lost, so the calls should hold and the caution should stay quiet."""
    from PIL import Image

    h, w = image.shape
    big = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize(
        (round(w * factor), round(h * factor)), Image.Resampling.BICUBIC)
    return _clip(np.asarray(big, dtype=np.float32))


def _to_shape(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An outline on an up-sampled image, back on the ground truth's grid for Dice."""
    if mask.shape == shape:
        return mask
    from busdx.data.preprocess import resize

    return resize(np.asarray(mask, dtype=np.uint8), shape[0], shape[1], nearest=True) > 0


def jpeg(image: np.ndarray, quality: float, rng) -> bytes:
    """The bytes of a JPEG file at ``quality``: what the user uploads."""
    buf = io.BytesIO()
    _pil(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def mirror(image: np.ndarray, _: float, rng) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def identity(image: np.ndarray, _: float, rng) -> np.ndarray:
    return image


PERTURB: dict[str, Callable] = {
    "none": identity, "mirror": mirror, "gamma": gamma, "contrast": contrast,
    "brightness": brightness, "blur": blur, "speckle": speckle, "downscale": downscale,
    "jpeg": jpeg, "upsample": upsample,
}

CONDITIONS = (
    Condition("unperturbed", "none", 0.0),
    Condition("left-right mirror", "mirror", 0.0),
    Condition("gamma 0.67 (brighter mid-tones)", "gamma", 0.67),
    Condition("gamma 1.5 (darker mid-tones)", "gamma", 1.5),
    Condition("contrast x0.6", "contrast", 0.6),
    Condition("contrast x1.4", "contrast", 1.4),
    Condition("brightness -0.15", "brightness", -0.15),
    Condition("brightness +0.15", "brightness", 0.15),
    Condition("blur sigma 1.5 px", "blur", 1.5),
    Condition("blur sigma 3 px", "blur", 3.0),
    Condition("speckle 15%", "speckle", 0.15),
    Condition("speckle 30%", "speckle", 0.30),
    Condition("half resolution", "downscale", 0.5),
    Condition("third resolution", "downscale", 1 / 3),
    Condition("JPEG quality 70", "jpeg", 70),
    Condition("JPEG quality 40", "jpeg", 40),
    Condition("finer sampling (2x pixels)", "upsample", 2.0),
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def image_rows(i: int, record, models, baseline=None) -> dict[str, dict]:
    """The ``i``-th validation image's row under every condition (random conditions are seeded
    by ``i``): label, calibrated probability, call, caution, Dice."""
    from _runner import plain_analysis

    from busdx.data.preprocess import load_mask
    from busdx.inference.decode import decode
    from busdx.inference.pipeline import analyze

    image = decode(str(record.image_path)).image
    truth = load_mask(record.mask_path)
    rows = {}
    for c in CONDITIONS:
        rng = np.random.default_rng([SEED, i])
        result = (plain_analysis(record, image, models, baseline) if c.kind == "none"
                  else analyze(c.apply(image, rng), models, render_overlays=False))
        mask = result.mask[:, ::-1] if c.kind == "mirror" else result.mask
        mask = _to_shape(mask, truth.shape)
        rows[c.name] = {"id": record.id, "patient": record.patient, "label": record.label,
                        "probability": result.probability,
                        "malignant": result.malignant_at_threshold,
                        "unusual": bool(result.input_check and result.input_check.unusual),
                        # every validation image shows a lesion: "no lesion" here is a miss
                        "found": bool(result.lesion_found),
                        "dice": dice(mask, truth)}
    return rows


def recorded_image(collected: dict, i: int) -> dict[str, dict]:
    """The ``i``-th image's rows as ``image_rows`` gives them, from a collected record."""
    return {name: part[i] for name, part in collected["rows"].items()}


def collect(data: str, models_dir: str | None, threads: int, baseline=None) -> dict:
    """Per condition and validation image: label, calibrated probability, call, Dice."""
    from _runner import validation_records
    from tqdm import tqdm

    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    rows: dict[str, list[dict]] = {c.name: [] for c in CONDITIONS}
    for i, r in enumerate(tqdm(validation_records(data), desc="validation images")):
        for name, row in image_rows(i, r, models, baseline).items():
            rows[name].append(row)
    return {"threshold": models.settings.threshold, "model_version": models.version,
            "rows": rows}


def _recalibrated(part: list[dict], threshold: float) -> dict | None:
    """What a site would get by recalibrating on these changed images (busdx evaluate external
    --recalibrate): the refit operating point's sensitivity and specificity out of fold; None
    when the images are too few to refit."""
    from busdx.evaluation.classification import Prediction
    from busdx.evaluation.site import SiteCalibrationError, fit_site_calibration

    # Platt scaling is affine in the logit, so logit(probability) = logit / T serves as well
    p = np.clip([r["probability"] for r in part], 1e-12, 1 - 1e-12)
    preds = [Prediction(str(r.get("id", i)), str(r.get("patient", i)), r["label"], 0,
                        float(np.log(q / (1 - q))), q)
             for i, (r, q) in enumerate(zip(part, p, strict=True))]
    try:
        fit = fit_site_calibration(preds, temperature=1.0, logit_shift=0.0, threshold=threshold)
    except SiteCalibrationError:
        return None
    return {"sensitivity": fit.out_of_fold.sensitivity, "specificity": fit.out_of_fold.specificity,
            "folds": fit.folds}


def summarise(collected: dict) -> dict:
    from busdx.evaluation.classification import roc_auc

    rows = collected["rows"]
    base = rows[CONDITIONS[0].name]
    base_p = np.array([r["probability"] for r in base])
    base_call = np.array([r["malignant"] for r in base])
    out = {}
    for c in CONDITIONS:
        part = rows[c.name]
        y = np.array([r["label"] for r in part])
        p = np.array([r["probability"] for r in part])
        call = np.array([r["malignant"] for r in part])
        out[c.name] = {
            "kind": c.kind, "strength": c.strength,
            "auc": roc_auc(y, p),
            "sensitivity": float(call[y == 1].mean()),
            "specificity": float((~call[y == 0]).mean()),
            "mean_dice": float(np.mean([r["dice"] for r in part])),
            "mean_abs_probability_change": float(np.abs(p - base_p).mean()),
            "calls_flipped": int((call != base_call).sum()),
            # the product's warning for images unlike the training images (input_check)
            "fraction_unusual": float(np.mean([r.get("unusual", False) for r in part])),
            # the share of these lesion images still reported as showing a lesion (rows
            # recorded before the presence check have no "found": None)
            "lesions_found": (float(np.mean([r["found"] for r in part]))
                              if all("found" in r for r in part) else None),
            "site_recalibrated": _recalibrated(part, collected["threshold"]),
        }
    ref = out[CONDITIONS[0].name]
    for s in out.values():
        s["flagged"] = bool(s["auc"] < ref["auc"] - AUC_DROP
                            or s["sensitivity"] < ref["sensitivity"] - SENSITIVITY_DROP)
    labels = np.array([r["label"] for r in base])
    return {
        "question": "how do AUC, the frozen operating point and the outline hold up under "
                    "image changes that other scanners and exports make?",
        "split": "validation (fold 5 not read)",
        "n": len(base), "malignant": int(labels.sum()),
        "model_version": collected["model_version"],
        "threshold": collected["threshold"],
        "flag_rule": f"AUC drops by more than {AUC_DROP} or sensitivity by more than "
                     f"{SENSITIVITY_DROP} from the unperturbed images",
        "conditions": out,
        "flagged": [n for n, s in out.items() if s["flagged"]],
    }


# the conditions a comparison of two graphs counts: not the unperturbed image (that is the
# validation AUC, compared apart), not the mirror (a graph that averages mirrors is invariant
# to it by construction), and not finer sampling (added after the rules that compare studies
# were fixed; it checks the caution, and leaving it out keeps their counts comparable)
NOT_COUNTED = ("unperturbed", "left-right mirror", "finer sampling (2x pixels)")


def compare(baseline: dict, candidate: dict) -> dict:
    """Two studies' results side by side (two graphs on the same images): over the counted
    conditions, the mean AUC, the calls flipped and the mean absolute change of sensitivity at
    each graph's own frozen threshold (from its own unperturbed images); whether the candidate
    is at least as good on the first and better on the second (rule N in the model card's
    history), and whether its operating point moves less (rule P)."""
    a, b = baseline["conditions"], candidate["conditions"]
    if set(a) != set(b):
        raise ValueError("the two studies ran different conditions")
    counted = [n for n in a if n not in NOT_COUNTED]

    def over_counted(s: dict) -> tuple[float, int, float]:
        ref = s[NOT_COUNTED[0]]["sensitivity"]
        return (float(np.mean([s[n]["auc"] for n in counted])),
                int(sum(s[n]["calls_flipped"] for n in counted)),
                float(np.mean([abs(s[n]["sensitivity"] - ref) for n in counted])))

    per_study = {"baseline": over_counted(a), "candidate": over_counted(b)}
    mean_auc, flips, sens_change = ({k: v[i] for k, v in per_study.items()} for i in range(3))
    return {
        "baseline_models": baseline["model_version"],
        "candidate_models": candidate["model_version"],
        "counted_conditions": counted,
        "mean_auc": mean_auc,
        "calls_flipped": flips,
        "mean_abs_sensitivity_change": sens_change,
        "per_condition": {n: {k: {m: s[n][m] for m in ("auc", "sensitivity", "specificity",
                                                       "calls_flipped")}
                              for k, s in (("baseline", a), ("candidate", b))} for n in a},
        "candidate_more_stable": bool(mean_auc["candidate"] >= mean_auc["baseline"]
                                      and flips["candidate"] < flips["baseline"]),
        "steadier_operating_point": bool(sens_change["candidate"] < sens_change["baseline"]),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["conditions"])
    s = [result["conditions"][n] for n in names]
    y = np.arange(len(names))[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.38 * len(names) + 1.6), sharey=True)
    ref = s[0]
    colour = ["#c0392b" if x["flagged"] else "#2c3e50" for x in s]
    axes[0].barh(y, [x["auc"] for x in s], color=colour)
    axes[0].axvline(ref["auc"], color="grey", lw=1, ls="--")
    axes[0].set_xlim(0.5, 1.0)
    axes[0].set_xlabel("ROC AUC")
    axes[1].scatter([x["sensitivity"] for x in s], y, label="sensitivity", color="#c0392b",
                    marker="o")
    axes[1].scatter([x["specificity"] for x in s], y, label="specificity", color="#2980b9",
                    marker="s")
    refit = [(x["site_recalibrated"]["sensitivity"], yy) for x, yy in zip(s, y, strict=True)
             if x.get("site_recalibrated")]
    if refit:
        axes[1].scatter(*zip(*refit, strict=True), label="sensitivity after a site "
                        "recalibration (out of fold)", facecolors="none", edgecolors="#c0392b",
                        marker="o")
    axes[1].axvline(0.9, color="#c0392b", lw=0.8, ls=":")
    axes[1].axvline(0.8, color="#2980b9", lw=0.8, ls=":")
    axes[1].set_xlim(0.3, 1.0)
    axes[1].set_xlabel("calls at the frozen threshold (filled)")
    below = (0.5, -0.06 * 18 / len(names) - 0.04)  # a legend under its panel
    axes[1].legend(loc="upper center", bbox_to_anchor=below, fontsize=8)
    axes[2].barh(y, [x["mean_dice"] for x in s], color="#16a085", label="mean Dice")
    found = [(x["lesions_found"], yy) for x, yy in zip(s, y, strict=True)
             if x.get("lesions_found") is not None]
    if found:  # a lesion the presence check dismisses says "no lesion": a miss
        axes[2].scatter(*zip(*found, strict=True), color="#8e44ad", marker="D",
                        label="lesions found (not called \"no lesion\")")
        axes[2].legend(loc="upper center", bbox_to_anchor=below, fontsize=8)
    axes[2].set_xlim(0.0, 1.0)
    axes[2].set_xlabel("outline")
    # how many of the changed images the product itself cautions about (input_check)
    axes[0].set_yticks(y, [f"{n} · cautioned {x['fraction_unusual']:.0%}"
                           if "fraction_unusual" in x else n for n, x in zip(names, s, strict=True)])
    fig.suptitle(f"Robustness on {result['n']} validation images ({result['malignant']} "
                 f"malignant), models {result['model_version']}; red: flagged "
                 f"({result['flag_rule']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="BUS-BRA root")
    parser.add_argument("--models", default=None, help="models folder (default: the bundled)")
    parser.add_argument("--out", default="reports/studies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", nargs=2, metavar=("BASELINE", "CANDIDATE"), default=None,
                        help="instead of running: two earlier robustness.json files of two "
                        "graphs, side by side (writes NAME.json into --out)")
    parser.add_argument("--name", default="robustness_comparison")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        base, cand = (json.loads(Path(f).read_text()) for f in args.compare)
        result = compare(base, cand)
        (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        log.info("mean AUC over %d conditions %.4f -> %.4f; calls flipped %d -> %d; mean "
                 "|sensitivity change| %.4f -> %.4f; candidate more stable: %s, steadier "
                 "operating point: %s", len(result["counted_conditions"]),
                 *result["mean_auc"].values(), *result["calls_flipped"].values(),
                 *result["mean_abs_sensitivity_change"].values(),
                 result["candidate_more_stable"], result["steadier_operating_point"])
        return 0
    if not args.data:
        parser.error("--data is required to run the study")
    from _runner import rows_path, write_rows

    collected = collect(args.data, args.models, args.threads)
    write_rows(collected, rows_path(out, "robustness"))
    result = summarise(collected)
    (out / "robustness.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "robustness.png")
    for name, s in result["conditions"].items():
        log.info("%-34s AUC %.3f  sens %.3f  spec %.3f  Dice %.3f  found %.3f  |dp| %.3f  "
                 "flips %3d  cautioned %.2f%s", name, s["auc"], s["sensitivity"],
                 s["specificity"], s["mean_dice"], s["lesions_found"],
                 s["mean_abs_probability_change"], s["calls_flipped"], s["fraction_unusual"],
                 "  FLAGGED" if s["flagged"] else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
