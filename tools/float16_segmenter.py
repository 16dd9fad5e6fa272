"""The selection measurement behind the float16 segmenter (docs/selection_rules.md, "The
segmenter's weights stored as float16"): a float32 segmenter graph against the same graph with
its weights stored as float16, on BUS-BRA's validation patients and BrEaST-dev's lesion images:
each one's mean Dice against the ground truth and how closely their served masks agree.

    python tools/float16_segmenter.py FLOAT32_GRAPH [OUT.json]

It was run on the float32 graph of release 74146a283c36 (models/segmenter.onnx at commit
417be0c); its output is reports/studies/segmenter_float16.json.
"""
import json
import shutil
import sys
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

source = Path(sys.argv[1])
target = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("reports/studies/segmenter_float16.json")
out = Path("runs/float16")
out.mkdir(parents=True, exist_ok=True)
shutil.copy(source, out / "seg32.onnx")
shutil.copy(source, out / "seg16.onnx")
store_weights(out / "seg16.onnx", "float16")
print("sizes MB", (out / "seg32.onnx").stat().st_size / 1e6, (out / "seg16.onnx").stat().st_size / 1e6)
s32, s16 = (open_session(out / f"seg{b}.onnx", 2, batch=1) for b in (32, 16))
index = load_index(resolve_root("../shared/data/busbra"))
split = make_split(index, SplitConfig(test_fold=5))
busbra = {r.id: r for r in busbra_records(index)}
sites = {"busbra_val": [busbra[r.id] for r in split.val],
         "breast_dev": [r for r in read_breast("../shared/data/breast-lesions-usg")
                        if r.split == "dev" and r.mask_path is not None]}
result = {}
for site, records in sites.items():
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
    result[site] = {"n": len(d32), "dice32": float(np.mean(d32)), "dice16": float(np.mean(d16)),
                    "change": float(np.mean(d16) - np.mean(d32)),
                    "agree_share_ge_0.99": float((agree >= 0.99).mean()), "agree_min": float(agree.min())}
    print(site, result[site], flush=True)
ok = all(abs(v["change"]) < 0.001 and v["agree_share_ge_0.99"] >= 0.99 for v in result.values())
result["staged"] = ok
target.write_text(json.dumps(result, indent=1) + "\n")
print("STAGE" if ok else "HOLD")
