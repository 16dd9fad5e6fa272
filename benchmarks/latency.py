"""Per-image latency of the full analysis: ONNX Runtime against torch eager, in one run.

Both sides run the product's own ``busdx.inference.analyze`` on the file's bytes (decode,
letterbox, segment, largest component, crop, classify, calibrate, heatmap, measurements). For
the torch side only the two model calls change: the ``Models`` object gets torch modules (eval
mode, ``torch.inference_mode``) behind the same ``run`` interface as an ONNX Runtime session, so
pre- and post-processing are byte-for-byte the same code. Both use the same number of threads.

Also measured: the two model calls alone (batch 1), the PNG overlays the API adds, the models'
FLOPs (counted from the ONNX graphs: conv, conv-transpose, matmul/gemm and einsum MACs) and the
CPU's sustained matmul GFLOP/s, which together give the compute bound: the time the models would
take if every FLOP ran at matmul speed.

    python benchmarks/latency.py --data ../shared/data/busbra -n 100
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import (
    REPO,
    add_common_args,
    fold_images,
    machine,
    percentiles,
    setup_logging,
    time_session_run,
    versions,
    write_result,
)

from busdx.evaluation.model_card import load_card

log = logging.getLogger("benchmarks.latency")


# ---------------------------------------------------------------------------- torch side


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


class TorchSession:
    """A torch module behind ONNX Runtime's ``session.run(names, feeds)`` call."""

    def __init__(self, module, output_names: tuple[str, ...]):
        self.module = module.eval()
        self.output_names = output_names

    def run(self, names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32))
        with torch.inference_mode():
            out = self.module(x)
        arrays = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
        if names is None:
            return arrays
        return [arrays[self.output_names.index(n)] for n in names]


def checkpoints(part: str, args_paths: list[str] | None, card: dict) -> list[Path]:
    """The checkpoints of ``part`` ("segmenter" or "classifier"): given, else those the card
    lists (an ensemble has several). Empty or missing ones mean random weights."""
    if args_paths:
        return [Path(p) for p in args_paths]
    section = card.get(part) if isinstance(card.get(part), dict) else {}
    return [REPO / p for p in section.get("checkpoints") or []]


def torch_segmenter(checkpoints: list[Path], card: dict) -> tuple[Any, str]:
    from busdx.models.segmentation import (
        SegmenterConfig,
        SegmenterEnsemble,
        SegmenterExport,
        build_segmenter,
        load_segmenter_checkpoints,
    )

    section = card.get("segmenter") if isinstance(card.get("segmenter"), dict) else {}
    tta = bool(section.get("test_time_augmentation"))
    if checkpoints and all(c.is_file() for c in checkpoints):
        net, _ = load_segmenter_checkpoints(checkpoints)
        source = "trained checkpoint " + " + ".join(_rel(c) for c in checkpoints)
    else:
        # one random-weight network per member the card lists, each with its own encoder, so
        # that torch does the ensemble's work (latency does not depend on weight values)
        members = section.get("members") or [section]
        nets = []
        for member in members:
            config = SegmenterConfig(pretrained=False)
            if member.get("decoder_channels"):
                config = dataclasses.replace(
                    config, decoder_channels=tuple(member["decoder_channels"])
                )
            if member.get("encoder") and "+" not in str(member["encoder"]):
                config = dataclasses.replace(config, encoder=member["encoder"])
            nets.append(build_segmenter(config))
        net = nets[0] if len(nets) == 1 else SegmenterEnsemble(nets).eval()
        source = (f"random weights, {len(nets)} network(s) of the card's architecture (latency "
                  "does not depend on weight values)")
    return SegmenterExport(net, hflip_tta=tta).eval(), source


def torch_classifier(checkpoints: list[Path], card: dict) -> tuple[Any, str]:
    """The exported graph's computation in eager mode: the card's mirror averaging, members
    averaged, and the Platt offset folded into the bias, as export_onnx does."""
    from busdx.models.classification import (
        ClassifierEnsemble,
        ClassifierSpec,
        build_classifier,
        export_module,
    )

    section = card.get("classifier") if isinstance(card.get("classifier"), dict) else {}
    if checkpoints and all(c.is_file() for c in checkpoints):
        from busdx.training.classification import load_checkpoint

        members = [load_checkpoint(c)[0] for c in checkpoints]
        model = members[0] if len(members) == 1 else ClassifierEnsemble(members)
        source = "trained checkpoint " + " + ".join(_rel(c) for c in checkpoints)
    else:
        from busdx.models.contract import input_views

        # one random-weight network per member, each with its own views, so that torch does
        # the ensemble's work (latency does not depend on weight values)
        members = section.get("members") or [section]
        nets = [
            build_classifier(
                ClassifierSpec(arch=str(m.get("arch", "lite0")).split("+")[0], weights="none",
                               views=input_views((m.get("config") or m).get("input", "crop"))),
                pretrained=False,
            )
            for m in members
        ]
        model = nets[0] if len(nets) == 1 else ClassifierEnsemble(nets)
        source = (f"random weights, {len(nets)} network(s) of the card's architecture (latency "
                  "does not depend on weight values)")
    wrapper = export_module(model.eval(), tta=section.get("tta") or "none",
                            logit_offset=float(section.get("logit_offset", 0.0)))
    return wrapper, source


def torch_models(models, seg_checkpoints: list[Path], cls_checkpoints: list[Path]):
    """A copy of ``models`` whose two sessions are torch modules; and where the weights came from."""
    from busdx.models.contract import CLASSIFIER_OUTPUTS, SEGMENTER_OUTPUT

    seg, seg_source = torch_segmenter(seg_checkpoints, load_card(models.directory))
    cls, cls_source = torch_classifier(cls_checkpoints, load_card(models.directory))
    swapped = dataclasses.replace(
        models,
        segmenter=TorchSession(seg, (SEGMENTER_OUTPUT,)),
        classifier=TorchSession(cls, CLASSIFIER_OUTPUTS),
        # the eager segmenter has no appearance or presence output (a matrix product and a
        # dot product on the pooled features: next to nothing)
        appearance_threshold=None,
        presence_threshold=None,
    )
    return swapped, {"segmenter": seg_source, "classifier": cls_source}


def parity(ort_models, torch_models_, size: int) -> dict[str, float]:
    """Largest output differences on one random input: ~1e-5 means the weights are the same."""
    from busdx.models.contract import CLASSIFIER_OUTPUTS, SEGMENTER_OUTPUT

    rng = np.random.default_rng(0)
    x = rng.random((1, ort_models.settings.views, size, size), dtype=np.float32)
    inputs = {"segmenter": x[:, :1], "classifier": x}
    out = {}
    names = {"segmenter": [SEGMENTER_OUTPUT], "classifier": list(CLASSIFIER_OUTPUTS)}
    for name in ("segmenter", "classifier"):
        a = getattr(ort_models, name).run(names[name], {"image": inputs[name]})
        b = getattr(torch_models_, name).run(names[name], {"image": inputs[name]})
        out[name] = float(max(np.abs(np.asarray(p) - np.asarray(q)).max() for p, q in zip(a, b, strict=True)))
    return out


# ---------------------------------------------------------------------------- timing


def time_analyses(backends: dict[str, Any], payloads: list[bytes], warmup: int,
                  render: bool = False) -> dict[str, dict]:
    """Interleaved per-image timings (each image on every backend, the order alternating), so
    drift in the machine's load hits every backend alike."""
    from busdx.inference import analyze

    names = list(backends)
    for name in names:
        for data in payloads[: max(1, warmup)]:
            analyze(data, backends[name], render_overlays=render)
    totals: dict[str, list[float]] = {n: [] for n in names}
    stages: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for i, data in enumerate(payloads):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            result = analyze(data, backends[name], render_overlays=render)
            totals[name].append((time.perf_counter() - start) * 1000.0)
            for stage, ms in result.timings_ms.items():
                if stage != "total":
                    stages[name].setdefault(stage, []).append(ms)
    return {
        name: {
            "total_ms": percentiles(totals[name]),
            "stages_ms_p50": {s: percentiles(v)["p50"] for s, v in stages[name].items()},
        }
        for name in names
    }


def time_model_calls(backends: dict[str, Any], size: int, reps: int, crops: int,
                     views: int = 1) -> dict[str, dict]:
    """The two model calls alone, as one analysis makes them: the segmenter on one image, the
    classifier on the batch of ``crops`` lesion crops of ``views`` views each (the network time
    without the pipeline)."""
    rng = np.random.default_rng(1)
    x = rng.random((crops, views, size, size), dtype=np.float32)
    out: dict[str, dict] = {}
    for name, models in backends.items():
        out[name] = {
            "segmenter": time_session_run(models.segmenter, x[:1, :1], reps),
            "classifier": time_session_run(models.classifier, x, reps),
        }
    return out


# ---------------------------------------------------------------------------- FLOPs and bound


COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum")


def _runtime_shapes(model) -> dict[str, list[int]]:
    """Shapes of every tensor the counted ops touch, from one real run on a batch of one:
    static shape inference gives up on graphs with computed padding (timm's TF "same" pads)."""
    import onnx
    import onnxruntime as ort

    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    wanted = []
    for node in model.graph.node:
        if node.op_type in COUNTED_OPS:
            wanted += [n for n in list(node.input) + list(node.output) if n and n not in shapes]
    wanted = list(dict.fromkeys(wanted))
    if not wanted:  # nothing to count (the stand-in models): no run needed
        return shapes
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {}
    for inp in session.get_inputs():
        dims = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = np.full(dims, 0.5, dtype=np.float32)
    for name, value in zip(wanted, session.run(wanted, feeds), strict=True):
        shapes[name] = list(np.asarray(value).shape)
    return shapes


def onnx_macs(path: Path) -> dict[str, Any]:
    """Multiply-accumulates of one call on one image (the graph's input batch of one) by the
    ops that carry the arithmetic; elementwise ops, pooling and resizes are left out (they are
    memory-bound and small in MACs). Inside a classifier graph one image becomes several
    passes (views, mirrors, members' batches): the batch axis of each op's own shape counts
    them."""
    import onnx

    model = onnx.load(str(path))
    shapes = _runtime_shapes(model)
    by_op: dict[str, int] = {}
    unknown = 0

    def add(op: str, macs: int) -> None:
        by_op[op] = by_op.get(op, 0) + int(macs)

    for node in model.graph.node:
        op = node.op_type
        try:
            if op == "Conv":
                out = shapes[node.output[0]]
                w = shapes[node.input[1]]  # [Cout, Cin/groups, kh, kw]
                add("Conv", int(np.prod(out)) * int(np.prod(w[1:])))
            elif op == "ConvTranspose":
                inp = shapes[node.input[0]]
                w = shapes[node.input[1]]  # [Cin, Cout/groups, kh, kw]
                add("ConvTranspose", int(np.prod(inp)) * int(np.prod(w[1:])))
            elif op in ("MatMul", "Gemm"):
                a = shapes[node.input[0]]
                out = shapes[node.output[0]]
                k = a[-1] if op == "MatMul" or not _attr(node, "transA") else a[-2]
                add(op, int(np.prod(out)) * int(k))
            elif op == "Einsum":
                ins = [shapes[i] for i in node.input]
                out = shapes[node.output[0]]
                # Contracted size = product of all input elements / output elements (two
                # operands sharing the contracted axes): exact for the CAM's "nc,nchw->nhw".
                contracted = max(int(np.prod(s)) for s in ins) // max(1, int(np.prod(out)))
                add("Einsum", int(np.prod(out)) * max(1, contracted))
        except KeyError:
            unknown += 1
    total = sum(by_op.values())
    return {"macs": total, "gflops": round(2 * total / 1e9, 4), "by_op_macs": by_op,
            "nodes_without_shapes": unknown}


def _attr(node, name: str) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return 0


def matmul_gflops(threads: int, size: int = 1536, reps: int = 5) -> dict[str, float]:
    """Sustained float32 matmul speed (best of ``reps``) with numpy's BLAS and with torch."""
    rng = np.random.default_rng(2)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    out: dict[str, float] = {}
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    out["numpy_gflops"] = round(flops / best / 1e9, 1)
    try:
        import torch

        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        torch.mm(ta, tb)
        best = min(_timed(lambda: torch.mm(ta, tb)) for _ in range(reps))
        out["torch_gflops"] = round(flops / best / 1e9, 1)
    except ImportError:
        pass
    out["peak_gflops"] = max(out.values())
    out["size"] = size
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from busdx.inference.models import Models
    from busdx.models.contract import CLASSIFIER_FILE, SEGMENTER_FILE

    models = Models.load(args.models, threads=args.threads)
    threads = models.segmenter.get_session_options().intra_op_num_threads
    torch.set_num_threads(threads)
    images = fold_images(args.data, limit=args.n)
    payloads = [img.path.read_bytes() for img in images]
    card = load_card(models.directory)
    eager, sources = torch_models(models, checkpoints("segmenter", args.seg_checkpoint, card),
                                  checkpoints("classifier", args.cls_checkpoint, card))
    crops = models.settings.batch
    size = models.segmenter_size
    diffs = parity(models, eager, size)
    log.info("timing %d images (threads %d), ORT vs torch eager", len(payloads), threads)
    analyses = time_analyses({"onnxruntime": models, "torch_eager": eager}, payloads,
                             args.warmup)
    # The target is the served latency: the server runs ONNX Runtime with no torch beside it.
    log.info("timing the same images with ONNX Runtime alone, as served")
    served = time_analyses({"onnxruntime": models}, payloads, args.warmup)["onnxruntime"]
    with_overlays = time_analyses({"onnxruntime": models}, payloads[: args.n_overlays],
                                  args.warmup, render=True)["onnxruntime"]
    calls = time_model_calls({"onnxruntime": models, "torch_eager": eager}, size, args.reps, crops,
                             models.settings.views)
    flops = {
        "segmenter": onnx_macs(models.directory / SEGMENTER_FILE),
        "classifier": onnx_macs(models.directory / CLASSIFIER_FILE),
    }
    # per analysis: one segmenter call, one classifier call per crop (its passes counted inside)
    total_gflop = flops["segmenter"]["gflops"] + crops * flops["classifier"]["gflops"]
    mm = matmul_gflops(threads)
    bound_ms = total_gflop / mm["peak_gflops"] * 1000.0
    ort_models_ms = (calls["onnxruntime"]["segmenter"]["p50"]
                     + calls["onnxruntime"]["classifier"]["p50"])
    ort_p50 = analyses["onnxruntime"]["total_ms"]["p50"]
    served_p50 = served["total_ms"]["p50"]
    eager_p50 = analyses["torch_eager"]["total_ms"]["p50"]
    return {
        "benchmark": "latency",
        "machine": machine(),
        "versions": versions(),
        "models": {"dir": str(models.directory), "version": models.version,
                   "stand_in": models.release.name == "stand-in"},
        "torch_weights": sources,
        "ort_vs_torch_max_abs_diff": diffs,
        "threads": threads,
        "images": {"fold": 5, "n": len(payloads), "ids_first": [i.id for i in images[:5]]},
        "warmup": args.warmup,
        "analysis": analyses,
        "analysis_served_onnxruntime": served,
        "analysis_with_overlays_onnxruntime": with_overlays,
        "ratio_p50_torch_over_ort": round(eager_p50 / ort_p50, 2) if ort_p50 else None,
        "ratio_p95_torch_over_ort": round(
            analyses["torch_eager"]["total_ms"]["p95"] / analyses["onnxruntime"]["total_ms"]["p95"],
            2,
        ),
        "model_calls_batch1": calls,
        "flops": flops,
        "classifier_crops_per_image": crops,
        "total_gflops_per_image": round(total_gflop, 4),
        "matmul": mm,
        "compute_bound_ms": round(bound_ms, 2),
        "ort_model_calls_p50_ms": round(ort_models_ms, 2),
        "fraction_of_matmul_peak": round(bound_ms / ort_models_ms, 3) if ort_models_ms else None,
        "targets": {
            "p50_ms_max": 60.0,
            "speedup_min": 2.0,
            "p50_measured_on": "ONNX Runtime alone, as served",
            "p50_met": served_p50 <= 60.0,
            "speedup_met": bool(ort_p50 and eager_p50 / ort_p50 >= 2.0),
        },
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("-n", type=int, default=100, help="fold-5 images to time (default 100)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=50, help="repetitions of each model call")
    parser.add_argument("--n-overlays", type=int, default=30,
                        help="images timed again with the API's PNG overlays")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for both backends (default: what Models.load picks)")
    parser.add_argument("--name", default="latency", help="result file name (without .json)")
    parser.add_argument("--seg-checkpoint", nargs="*", default=None,
                        help="the segmenter's checkpoint(s) for torch (default: the card's)")
    parser.add_argument("--cls-checkpoint", nargs="*", default=None,
                        help="the classifier's checkpoint(s) for torch (default: the card's)")
    args = parser.parse_args(argv)
    result = run(args)
    write_result(args.out, args.name, result)
    a = result["analysis"]
    log.info("p50 ORT %.1f ms, torch %.1f ms (x%.2f, interleaved); ORT alone p50 %.1f, p95 %.1f ms",
             a["onnxruntime"]["total_ms"]["p50"], a["torch_eager"]["total_ms"]["p50"],
             result["ratio_p50_torch_over_ort"],
             result["analysis_served_onnxruntime"]["total_ms"]["p50"],
             result["analysis_served_onnxruntime"]["total_ms"]["p95"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
