"""Can a linear gate on the outline network's features say "no lesion", and does it carry to
another hospital? Selection data only: BUS-BRA's training and validation patients, BrEaST's
development half; no test image is read.

The bundled release's Lite1 outline network (its first member, taken out of the graph and
exported with its pooled encoder features, busdx.models.segmentation.pooled_features) describes
each image by its features averaged over space at each encoder stage. The rule, written before
the gate was scored on BrEaST:

- A logistic regression (standardised features, C = 0.1) learns lesion images (1) against their
  lesion-free windows (0) from BUS-BRA's training patients.
- Its threshold keeps 99% of BUS-BRA's validation lesion images; below it the product would say
  "no lesion".
- Scored: the share of BUS-BRA validation windows called "no lesion", and on BrEaST-dev (another
  hospital, whole scans) the windows and normal scans called "no lesion" and the lesion scans
  still found. A check on framing: square cuts of each validation window and square cuts around
  each validation lesion, so that the letterbox's padding cannot tell them apart.

    python studies/presence_gate.py --data ../shared/data/busbra \\
        --breast ../shared/data/breast-lesions-usg --out reports/studies
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("presence_gate")
C = 0.1
KEEP = 0.99


def _square_cuts(records) -> tuple[list, list]:
    """Square cuts of each record's lesion-free window (its first square) and around its lesion
    (the image's shorter side)."""
    from busdx.data.preprocess import load_mask
    from busdx.data.windows import lesion_free_window
    from busdx.inference.decode import decode

    free, lesion = [], []
    for r in records:
        image, mask = decode(str(r.image_path)).image, load_mask(r.mask_path)
        window = lesion_free_window(mask) if mask.shape == image.shape else None
        if window is None:
            continue
        strip = window.cut(image)
        side = min(strip.shape)
        free.append(np.ascontiguousarray(strip[:side, :side]))
        ys, xs = np.nonzero(mask)
        side = min(image.shape)
        top = min(max(0, int(ys.mean()) - side // 2), image.shape[0] - side)
        left = min(max(0, int(xs.mean()) - side // 2), image.shape[1] - side)
        lesion.append(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return free, lesion


def _features_graph(models_dir: Path, work: Path) -> Path:
    """The release's first outline network with its features output (a graph of its own)."""
    from busdx.models.from_onnx import recover_segmenter
    from busdx.models.segmentation import export_onnx

    net, _ = recover_segmenter(models_dir / "segmenter.onnx", 0)
    path = work / "segmenter_features.onnx"
    export_onnx(net, path)
    return path


def _fit_gate(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)).fit(x, y)


def collect(data: str, breast: str, models: str | None, threads: int = 2) -> dict:
    """Each scored image's gate score (the rows; the gate is fitted here, on the training
    patients' features, which are not kept: 500-odd numbers an image)."""
    import tempfile

    from busdx.data.index import load_index, resolve_root
    from busdx.data.sites import busbra_records, read_breast
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.appearance import segmenter_outputs, site_images
    from busdx.inference.models import default_models_dir, open_session
    from busdx.release import load_release

    models_dir = Path(models) if models else default_models_dir()
    index = load_index(resolve_root(data))
    split = make_split(index, SplitConfig(test_fold=5))
    busbra = {r.id: r for r in busbra_records(index)}
    dev = [r for r in read_breast(breast) if r.split == "dev"]
    with tempfile.TemporaryDirectory() as work:
        session = open_session(_features_graph(models_dir, Path(work)), threads, batch=1)

        def features(images) -> np.ndarray:
            return segmenter_outputs(session, images, 224, "features")

        def part(records) -> tuple[list[str], np.ndarray]:
            kinds, images = zip(*site_images(records), strict=True)
            return list(kinds), features(images)

        kinds, x = part([busbra[r.id] for r in split.train])
        gate = _fit_gate(x, np.array([k == "image" for k in kinds]))

        def scored(records) -> dict:
            kinds, x = part(records)
            return {"kinds": kinds, "scores": gate.decision_function(x).round(6).tolist()}

        free, lesion = _square_cuts([busbra[r.id] for r in split.val])
        return {
            "model_version": load_release(models_dir / "release.json").version,
            "train_images": len(kinds),
            "val": scored([busbra[r.id] for r in split.val]),
            "breast_dev": scored(dev),
            "val_square_windows": gate.decision_function(features(free)).round(6).tolist(),
            "val_square_lesions": gate.decision_function(features(lesion)).round(6).tolist(),
        }


def summarise(rows: dict) -> dict:
    def split(part: dict) -> tuple[np.ndarray, np.ndarray]:
        return np.array(part["scores"]), np.array([k == "image" for k in part["kinds"]])

    score, yv = split(rows["val"])
    threshold = float(np.quantile(score[yv], 1 - KEEP))

    def share(values, below: bool) -> dict:
        values = np.asarray(values)
        hits = int(((values < threshold) if below else (values >= threshold)).sum())
        return {"hits": hits, "n": int(len(values)), "share": hits / len(values) if len(values)
                else None}

    breast, yb = split(rows["breast_dev"])
    return {
        "model_version": rows["model_version"],
        "rule": f"logistic regression (standardised, C={C}) of lesion images against their "
                f"lesion-free windows, {rows['train_images']} images of BUS-BRA training "
                f"patients; threshold keeping {100 * KEEP:g}% of BUS-BRA validation lesion images",
        "threshold": threshold,
        "busbra_val": {"no_lesion": share(score[~yv], True), "found": share(score[yv], False)},
        "busbra_val_square_cuts": {"no_lesion": share(rows["val_square_windows"], True),
                                   "found": share(rows["val_square_lesions"], False)},
        "breast_dev": {"no_lesion": share(breast[~yb], True), "found": share(breast[yb], False)},
    }


def describe(result: dict, args, out: Path) -> None:
    for part in ("busbra_val", "busbra_val_square_cuts", "breast_dev"):
        r = result[part]
        log.info("%s: 'no lesion' on %d of %d lesion-free images; lesions found in %d of %d",
                 part, r["no_lesion"]["hits"], r["no_lesion"]["n"], r["found"]["hits"],
                 r["found"]["n"])


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "presence_gate",
                     lambda a: collect(a.data, a.breast, a.models, a.threads),
                     summarise, describe, argv, breast=True)


if __name__ == "__main__":
    raise SystemExit(main())
