"""int8 static quantisation of both models, kept only if it costs less than 0.005 in Dice and AUC.

ONNX Runtime's ``quantize_static`` (QDQ format, per-channel int8 weights, uint8 activations,
min/max calibration) is calibrated on a few *training* images: letterboxed images for the
segmenter, ground-truth lesion crops for the classifier. The decision is made on the
*validation* split (patient-wise, fold 5 untouched): the served Dice of the segmenter
(largest component, holes filled) and the end-to-end AUC (predicted masks -> crops ->
classifier), for every mix of fp32 and int8 models. The fastest mix whose drops are both
under the tolerance is kept; if none is, the numbers are recorded and fp32 stays.

    python benchmarks/quantize.py --data ../shared/data/busbra
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import (
    REPO,
    add_common_args,
    machine,
    setup_logging,
    split_records,
    time_session_run,
    versions,
    write_result,
)

log = logging.getLogger("benchmarks.quantize")

TOLERANCE = 0.005
MIXES = {  # name -> (segmenter precision, classifier precision)
    "fp32": ("fp32", "fp32"),
    "int8_segmenter": ("int8", "fp32"),
    "int8_classifier": ("fp32", "int8"),
    "int8_both": ("int8", "int8"),
}


class ListReader:
    """onnxruntime's CalibrationDataReader over a list of [1, 1, S, S] arrays."""

    def __init__(self, arrays: list[np.ndarray], input_name: str = "image"):
        self._items = iter([{input_name: a} for a in arrays])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # not needed by min/max calibration, part of the reader interface
        pass


def calibration_inputs(records, settings, size: int) -> dict[str, list[np.ndarray]]:
    from dataclasses import replace

    from busdx.data.preprocess import load_gray, load_mask, prepare
    from busdx.inference.pipeline import classifier_inputs

    # the heatmap's crop (with the whole image beside it for a two-view classifier)
    settings = replace(settings, contexts=(settings.crop.context,))
    seg, cls = [], []
    for r in records:
        image = load_gray(r.image_path)
        x, _ = prepare(image, size)
        seg.append(x[None, None].astype(np.float32))
        cls.append(classifier_inputs(image, load_mask(r.mask_path), settings)[0])
    return {"segmenter": seg, "classifier": cls}


# Inputs that carry shapes, not pixels: the ops computing them must stay exact.
SHAPE_INPUTS = {"Pad": (1, 2), "Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,),
                "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "ConstantOfShape": (0,)}


def shape_subgraph(model) -> list[str]:
    """Names of the nodes that compute shapes or paddings (timm's TF-"same" padding is computed
    in the graph from the input's size, in float: quantising that arithmetic shifts the padding
    and changes the output size, e.g. a 6x6 CAM instead of 7x7)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: set[str] = set()
    stack = [producer[node.input[i]] for node in model.graph.node
             for i in SHAPE_INPUTS.get(node.op_type, ())
             if i < len(node.input) and node.input[i] in producer]
    while stack:
        node = stack.pop()
        if node.name in found:
            continue
        found.add(node.name)
        if node.op_type != "Shape":  # a Shape's input is image data: stop there
            stack += [producer[i] for i in node.input if i in producer]
    return sorted(found)


def output_check(fp32: Path, int8: Path, x: np.ndarray) -> dict[str, Any]:
    """Same output shapes, and how far the int8 outputs are from the fp32 ones on one input."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    outs = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
            .run(None, {"image": x}) for p in (fp32, int8)]
    same = all(a.shape == b.shape for a, b in zip(*outs, strict=True))
    diff = (max(float(np.abs(a - b).max()) for a, b in zip(*outs, strict=True))
            if same else None)
    return {"same_output_shapes": same, "max_abs_diff_first_input": diff}


def _chunk(n: int) -> int:
    """Images per range update, never a divisor of ``n``: onnxruntime's calibrator raises "No
    data is collected" when the last update leaves nothing behind."""
    return n + 1 if n < 8 else next(c for c in range(8, n + 2) if n % c)


def quantize(src: Path, dst: Path, arrays: list[np.ndarray]) -> dict[str, Any]:
    """Quantise ``src`` into ``dst``. Runs in a temporary working directory: the quantiser and
    its shape inference leave files (<uuid>.data, sym_shape_infer_temp.onnx) in the current one."""
    src, dst, here = src.resolve(), dst.resolve(), os.getcwd()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="busdx-quant-") as tmp:
        os.chdir(tmp)
        try:
            return _quantize_here(src, dst, arrays, Path(tmp))
        finally:
            os.chdir(here)


def _quantize_here(src: Path, dst: Path, arrays: list[np.ndarray], tmp: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from busdx.models.storage import store_weights

    # the quantiser reads weights from initializers: a float16-stored graph (weights behind
    # casts) would keep them all in float, so start from float32 storage
    full = store_weights(shutil.copy2(src, tmp / "float32.onnx"), "float32")
    prepared = tmp / "prepared.onnx"
    try:
        quant_pre_process(str(full), str(prepared), skip_symbolic_shape=False)
        source = prepared
    except Exception as err:  # pre-processing is an optimisation; quantise the raw graph
        log.warning("quant_pre_process failed on %s (%s): quantising the graph as exported",
                    src.name, err)
        source = full
    excluded = shape_subgraph(onnx.load(str(source)))
    start = time.perf_counter()
    _quantize_static(source, dst, arrays, excluded)
    return {"seconds": round(time.perf_counter() - start, 1),
            "megabytes": round(dst.stat().st_size / 1e6, 2),
            "fp32_megabytes": round(full.stat().st_size / 1e6, 2),
            "shape_nodes_kept_fp32": len(excluded),
            **output_check(full, dst, arrays[0])}


def _quantize_static(source: Path, dst: Path, arrays: list[np.ndarray], excluded: list[str]):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source), str(dst), ListReader(arrays), quant_format=QuantFormat.QDQ,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
        # Fold the ranges every few images instead of holding every activation of every image.
        extra_options={"CalibMaxIntermediateOutputs": _chunk(len(arrays))},
    )


def models_dir_for(mix: tuple[str, str], fp32_dir: Path, int8_files: dict[str, Path],
                   work: Path, name: str) -> Path:
    """A models folder with the card and each model in the requested precision."""
    from busdx.models.contract import CLASSIFIER_FILE, SEGMENTER_FILE

    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(fp32_dir / "release.json", out / "release.json")
    for part, file, precision in (("segmenter", SEGMENTER_FILE, mix[0]),
                                  ("classifier", CLASSIFIER_FILE, mix[1])):
        src = int8_files[part] if precision == "int8" else fp32_dir / file
        target = out / file
        target.unlink(missing_ok=True)
        target.symlink_to(src.resolve())
    from busdx.release import load_release, with_graphs, write_release

    # the int8 graphs are other graphs: the folder's release names them by their own digests
    write_release(with_graphs(load_release(out), out), out)
    return out


def served_dice(models_dir: Path, records, threads: int) -> dict[str, float]:
    from busdx.evaluation.segmentation import open_session, score_records
    from busdx.models.contract import SEGMENTER_FILE

    session = open_session(models_dir / SEGMENTER_FILE, threads)
    scores, _ = score_records(session, records)
    return {"dice": float(np.mean([s.dice for s in scores])),
            "dice_served": float(np.mean([s.dice_post for s in scores]))}


def end_to_end_auc(models_dir: Path, records, threads: int) -> dict[str, float]:
    from busdx.evaluation.classification import predict_records, roc_auc

    preds, empty = predict_records(records, models_dir, masks="predicted", threads=threads)
    return {"auc": roc_auc([p.label for p in preds], [p.prob for p in preds]),
            "empty_masks": empty}


def call_latency(models_dir: Path, threads: int, reps: int) -> dict[str, dict]:
    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    views = models.settings.views
    x = np.random.default_rng(0).random((1, views, models.segmenter_size, models.segmenter_size),
                                        dtype=np.float32)
    out = {}
    for part in ("segmenter", "classifier"):
        session = getattr(models, part)
        out[part] = time_session_run(session, x if part == "classifier" else x[:, :1], reps)
    return out


def decide(results: dict[str, dict], quantisation: dict[str, dict]) -> dict[str, Any]:
    base = results["fp32"]
    broken = {part for part, q in quantisation.items() if not q["same_output_shapes"]}
    verdicts = {}
    for name, r in results.items():
        if name == "fp32":
            continue
        dice_drop = base["dice_served"] - r["dice_served"]
        auc_drop = base["auc"] - r["auc"]
        verdicts[name] = {
            "dice_drop": round(dice_drop, 4),
            "auc_drop": round(auc_drop, 4),
            "passes": dice_drop < TOLERANCE and auc_drop < TOLERANCE
            and not any(r[part] == "int8" for part in broken),
            "model_calls_p50_ms": r["model_calls_p50_ms"],
        }
    passing = [n for n, v in verdicts.items() if v["passes"]]
    fastest = min(passing, key=lambda n: verdicts[n]["model_calls_p50_ms"], default=None)
    if fastest is not None and verdicts[fastest]["model_calls_p50_ms"] >= base["model_calls_p50_ms"]:
        fastest = None  # accurate enough but not faster: nothing gained
    return {"tolerance": TOLERANCE, "verdicts": verdicts, "kept": fastest or "fp32"}


def balanced_subset(records, n: int, seed: int = 0) -> list:
    """``n`` records, half of each label where possible (an AUC needs both classes)."""
    rng = np.random.default_rng(seed)
    by_label = {label: [r for r in records if r.label == label] for label in (0, 1)}
    take = {1: min(n // 2, len(by_label[1]))}
    take[0] = min(n - take[1], len(by_label[0]))
    picked = []
    for label, k in take.items():
        pool = by_label[label]
        picked += [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False).tolist())]
    return sorted(picked, key=lambda r: r.id)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    from busdx.inference.models import Models
    from busdx.models.contract import CLASSIFIER_FILE, SEGMENTER_FILE

    ort.set_default_logger_severity(3)  # the quantiser's graph warnings are noise here
    fp32 = Models.load(args.models, threads=args.threads)
    fp32_dir = fp32.directory
    threads = fp32.segmenter.get_session_options().intra_op_num_threads
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = split_records(args.data, "train")
    picks = rng.choice(len(train), size=min(args.calibration, len(train)), replace=False)
    calib = calibration_inputs([train[i] for i in sorted(picks.tolist())], fp32.settings,
                               fp32.segmenter_size)
    int8_files = {"segmenter": work / "int8" / SEGMENTER_FILE,
                  "classifier": work / "int8" / CLASSIFIER_FILE}
    sources = {"segmenter": fp32_dir / SEGMENTER_FILE, "classifier": fp32_dir / CLASSIFIER_FILE}
    quantisation = {part: quantize(sources[part], int8_files[part], calib[part])
                    for part in ("segmenter", "classifier")}
    val = split_records(args.data, "val")
    if args.limit:
        val = balanced_subset(val, args.limit)
    results: dict[str, dict] = {}
    dice_by_precision: dict[str, dict] = {}
    for name, mix in MIXES.items():
        directory = models_dir_for(mix, fp32_dir, int8_files, work, name)
        if mix[0] not in dice_by_precision:
            dice_by_precision[mix[0]] = served_dice(directory, val, threads)
        calls = call_latency(directory, threads, args.reps)
        results[name] = {
            "segmenter": mix[0],
            "classifier": mix[1],
            **dice_by_precision[mix[0]],
            **end_to_end_auc(directory, val, threads),
            "model_calls_ms": calls,
            "model_calls_p50_ms": round(calls["segmenter"]["p50"] + calls["classifier"]["p50"], 2),
        }
        log.info("%s: dice %.4f (served %.4f), AUC %.4f, model calls %.1f ms", name,
                 results[name]["dice"], results[name]["dice_served"], results[name]["auc"],
                 results[name]["model_calls_p50_ms"])
    decision = decide(results, quantisation)
    kept_dir = str(work / decision["kept"]) if decision["kept"] != "fp32" else None
    return {
        "benchmark": "quantization",
        "machine": machine(),
        "versions": versions(),
        "models": {"dir": str(fp32_dir), "version": fp32.version,
                   "stand_in": fp32.release.name == "stand-in"},
        "method": "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 "
                  "activations, min/max calibration",
        "calibration_images": {"split": "train", "n": len(calib["segmenter"])},
        "evaluation_images": {"split": "validation (patient-wise; test fold 5 untouched)",
                              "n": len(val)},
        "threads": threads,
        "quantisation": quantisation,
        "results": results,
        "decision": decision,
        "kept_models_dir": kept_dir,
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--work", default=str(REPO / "runs" / "quant"),
                        help="where the int8 models and the mixed model folders go")
    parser.add_argument("--calibration", type=int, default=48, help="training images")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N validation images (smoke tests)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    write_result(args.out, "quantization", result)
    log.info("kept: %s", result["decision"]["kept"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
