"""Rule T's runs on a GPU machine (studies/cross_validation.py): every (recipe, fold, seed) at
once, each in its own process, then the out-of-fold logits collected.

Each run is ``busdx train classification --val-fold k`` in effect (the trainer is called
directly, since the machine lacks the serving and DICOM packages): it trains on the other three
of folds 1-4, keeps the epoch with the best AUC on fold k, and scores fold k on its ground-truth
crop, plain and averaged with its mirror as the shipped graph does. Run from the repository
root, with the folder made by ``prep.py`` carried:

    export PYTHONPATH=src:.gpu/shim DEADLINE=480
    python .gpu/run.py launch $OUT /tmp/runs 6.5 2      # recipes A, B, C; folds 1-4; SEED=0
    JOBS=D1s0,D2s0,D3s0,D4s0 KEEP= python .gpu/run.py launch $OUT /tmp/runs 3.3 2
    JOBS=E1,E2,E3,E4,F1,F2,F3,F4,Ev,Fv,Dv KEEP=Ev,Fv,Dv python .gpu/run.py launch ...  # rule V

``JOBS`` picks runs by recipe letter, fold and optionally ``s<seed>`` (else ``SEED``);
``KEEP`` names the runs whose float16 checkpoints come back; the launcher stops any run still
going after ``DEADLINE`` seconds and collects the rest.

A call's transfer is limited to 64 MiB, the carried ``.gpu`` (about 55 MiB) included: move
``models/*.onnx`` out of the checkout for the call and back after it. Eight to twelve runs side
by side on an H200 take three to six minutes (288-pixel and two-view runs the longest); the
returned ``cv.json`` goes to ``studies/cross_validation.py collect --runs ...``. A new question
is a new recipe letter here and in that script's ``RECIPE_FLAGS``, and a rule in
``docs/selection_rules.md`` committed before the call.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = {"imbalance": "weighted", "epochs": 12, "batch_size": 24, "lr": 1e-3,
        "backbone_lr": 3e-4, "patience": 5, "jitter": 0.25,
        "seed": int(os.environ.get("SEED", "0")), "device": "auto"}
RECIPES = {
    "A": {"arch": "lite1", "input": "both", "augment": "default"},
    "B": {"arch": "lite2", "input": "crop", "augment": "strong"},
    "C": {"arch": "lite2", "input": "crop", "augment": "strong", "aux_weight": 0.3},
    "D": {"arch": "lite1", "input": "both", "augment": "strong"},
    "E": {"arch": "lite1", "input": "both", "augment": "default", "size": 288},
    "F": {"arch": "lite2", "input": "crop", "augment": "strong", "size": 288},
    "G": {"arch": "lite2", "input": "both", "augment": "default"},
}
JOBS = (os.environ["JOBS"].split(",") if os.environ.get("JOBS")
        else [f"{r}{k}" for r in "ABC" for k in (1, 2, 3, 4)])


def samples():
    import numpy as np
    from PIL import Image

    from busdx.training.classification import Sample

    with open(HERE / "data.pkl", "rb") as fh:
        items = pickle.load(fh)
    out = []
    for it in items:
        img = np.array(Image.open(io.BytesIO(it["webp"])).convert("L"), dtype=np.uint8)
        mask = (np.array(Image.open(io.BytesIO(it["mask"])).convert("L")) > 0).astype(np.uint8)
        out.append((it, Sample(it["id"], it["patient"], it["label"], img, mask)))
    return out


def job(name, runs, max_minutes, workers, max_batches=None, epochs=None):
    import numpy as np
    import torch

    from busdx.models.classification import normalise
    from busdx.training import classification as tc

    logging.basicConfig(level=logging.INFO, format=f"{name} %(asctime)s %(message)s")
    # fold k of 1-4 as validation, or "v": the bundled split's validation images (the CLI's
    # train/validation split of folds 1-4, split seed 0; their ids in bundled_val.json)
    k = None if name[1] == "v" else int(name[1])
    seed = {"seed": int(name[3:])} if len(name) > 2 else {}
    cfg = dict(BASE, **RECIPES[name[0]], **seed, val_fold=k, max_minutes=max_minutes,
               workers=workers, threads=1, max_batches=max_batches)
    if epochs:
        cfg["epochs"] = epochs
    config = tc.ClassifierTrainConfig(**cfg)
    data = samples()
    if k is None:
        held = set(json.loads((HERE / "bundled_val.json").read_text()))
        is_val = [it["id"] in held for it, _ in data]
    else:
        is_val = [it["fold"] == k for it, _ in data]
    train = [s for (_, s), v in zip(data, is_val, strict=True) if not v]
    val = [s for (_, s), v in zip(data, is_val, strict=True) if v]
    aux = np.array([it["aux"] for (it, _), v in zip(data, is_val, strict=True) if not v],
                   dtype=np.int64)
    out = Path(runs) / name
    result = tc.train_classifier(train, val, config, out, aux=aux if config.aux_weight else None)
    model, ckpt = tc.load_checkpoint(result.checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    loader = torch.utils.data.DataLoader(tc.CropDataset(val, config, train=False), batch_size=64)
    plain, mirrored = [], []
    with torch.no_grad():
        for x, _ in loader:
            x = normalise(model, x.to(device))
            a = model(x).squeeze(1)
            b = model(torch.flip(x, dims=[3])).squeeze(1)
            plain.append(a.cpu().numpy())
            mirrored.append(((a + b) / 2).cpu().numpy())
    record = {
        "name": name, "config": tc.asdict(config), "best_epoch": result.best_epoch,
        "best_val_auc": result.best_val_auc, "wall_minutes": result.wall_minutes,
        "device": result.device, "history": result.history,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "images": "WebP q90 copy (studies/cv_device/prep.py)",
        "ids": [s.id for s in val], "labels": [s.label for s in val],
        "logits": np.concatenate(plain).tolist(),
        "logits_mirror": np.concatenate(mirrored).tolist(),
    }
    (out / "oof.json").write_text(json.dumps(record))
    half = {key: (v.half() if v.is_floating_point() else v)
            for key, v in ckpt["state_dict"].items()}
    torch.save({**ckpt, "state_dict": half}, out / "classifier_fp16.pt")


def launch(outdir, runs, max_minutes, workers, extra):
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    logs = Path(runs) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    # each child writes its own log for as long as it runs, so the file stays open past here
    procs = {n: subprocess.Popen([sys.executable, __file__, "job", n, runs, str(max_minutes),
                                  str(workers), *extra],
                                 stdout=open(logs / f"{n}.log", "w"),  # noqa: SIM115
                                 stderr=subprocess.STDOUT, env=env) for n in JOBS}
    deadline = float(os.environ.get("DEADLINE", "1e9"))
    while any(p.poll() is None for p in procs.values()):
        time.sleep(15)
        if time.time() - t0 > deadline:
            print("deadline: killing", [n for n, p in procs.items() if p.poll() is None])
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
            break
        done = [n for n, p in procs.items() if p.poll() is not None]
        print(f"{time.time() - t0:6.0f}s done {done}", flush=True)
    records, status = [], {}
    for n, p in procs.items():
        status[n] = p.returncode
        f = Path(runs) / n / "oof.json"
        if f.exists():
            records.append(json.loads(f.read_text()))
    (outdir / "cv.json").write_text(json.dumps({"status": status, "runs": records,
                                                "wall_s": time.time() - t0}))
    with open(outdir / "logs.txt", "w") as fh:
        for n in JOBS:
            lines = (logs / f"{n}.log").read_text().splitlines()
            fh.write(f"==== {n} rc={status[n]}\n" + "\n".join(lines[-40:]) + "\n")
    for n in os.environ.get("KEEP", "B1,B2,B3,B4").split(","):
        f = Path(runs) / n / "classifier_fp16.pt"
        if f.exists():
            shutil.copy(f, outdir / f"{n}.pt")
    print("status", status, "wall", time.time() - t0, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "launch":
        launch(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6:])
    else:
        job(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]),
            int(sys.argv[6]) if len(sys.argv) > 6 else None,
            int(sys.argv[7]) if len(sys.argv) > 7 else None)
