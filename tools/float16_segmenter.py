"""The selection measurement behind the float16 segmenter (docs/selection_rules.md, "The
segmenter's weights stored as float16"): a float32 segmenter graph against the same graph with
its weights stored as float16, on BUS-BRA's validation patients and BrEaST-dev's lesion images:
each one's mean Dice against the ground truth and how closely their served masks agree.

    python tools/float16_segmenter.py FLOAT32_GRAPH [OUT.json] [--data DIR] [--breast DIR]

It was run on the float32 graph of release 74146a283c36 (models/segmenter.onnx at commit
417be0c); its output is reports/studies/segmenter_float16.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from busdx.data.index import load_index, resolve_root
from busdx.data.preprocess import load_mask
from busdx.data.sites import busbra_records, read_breast
from busdx.data.splits import SplitConfig, make_split
from busdx.evaluation.metrics import dice
from busdx.inference.decode import decode
from busdx.inference.models import open_session
from busdx.inference.pipeline import run_segmenter, served_mask
from busdx.models.storage import store_weights

WORK = Path("runs/float16")  # the two graphs compared; runs/ stays out of git
log = logging.getLogger("float16_segmenter")


def compare(s32, s16, records) -> dict:
    """Mean Dice of each graph's served mask against the ground truth, and their agreement."""
    d32, d16, agree = [], [], []
    for r in records:
        image = decode(str(r.image_path)).image
        truth = load_mask(r.mask_path)
        if truth.shape != image.shape:
            continue
        masks = []
        for s in (s32, s16):
            prob, _ = run_segmenter(image, s, 224)
            masks.append(served_mask(prob > 0.5)[0])
        d32.append(dice(masks[0], truth))
        d16.append(dice(masks[1], truth))
        agree.append(dice(masks[0], masks[1]))
    agree = np.array(agree)
    return {"n": len(d32), "dice32": float(np.mean(d32)), "dice16": float(np.mean(d16)),
            "change": float(np.mean(d16) - np.mean(d32)),
            "agree_share_ge_0.99": float((agree >= 0.99).mean()),
            "agree_min": float(agree.min())}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("graph", type=Path, help="the float32 segmenter graph")
    parser.add_argument("out", type=Path, nargs="?",
                        default=Path("reports/studies/segmenter_float16.json"))
    parser.add_argument("--data", default="../shared/data/busbra", help="BUS-BRA root")
    parser.add_argument("--breast", default="../shared/data/breast-lesions-usg",
                        help="BrEaST-Lesions-USG root")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.graph, WORK / "seg32.onnx")
    shutil.copy(args.graph, WORK / "seg16.onnx")
    store_weights(WORK / "seg16.onnx", "float16")
    log.info("sizes (MB): float32 %.1f, float16 %.1f", (WORK / "seg32.onnx").stat().st_size / 1e6,
             (WORK / "seg16.onnx").stat().st_size / 1e6)
    s32, s16 = (open_session(WORK / f"seg{b}.onnx", 2, batch=1) for b in (32, 16))
    index = load_index(resolve_root(args.data))
    split = make_split(index, SplitConfig(test_fold=5))
    busbra = {r.id: r for r in busbra_records(index)}
    sites = {"busbra_val": [busbra[r.id] for r in split.val],
             "breast_dev": [r for r in read_breast(args.breast)
                            if r.split == "dev" and r.mask_path is not None]}
    result = {}
    for site, records in sites.items():
        result[site] = compare(s32, s16, records)
        log.info("%s: %s", site, result[site])
    ok = all(abs(v["change"]) < 0.001 and v["agree_share_ge_0.99"] >= 0.99
             for v in result.values())
    result["staged"] = ok
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log.info("%s; wrote %s", "STAGE" if ok else "HOLD", args.out)


if __name__ == "__main__":
    main()
