"""Which presence check to try next? Variants of the shipped check ("does the image show a lesion
at all?", busdx.evaluation.presence), each fitted and thresholded by the shipped rule and
scored on selection data only: BUS-BRA's validation patients and BrEaST's development half out
of fold. No test image is read. The variants were fixed before any was fitted
(docs/generalisation_plan.md, fourth entry; the pooling variants, fifth entry; the outlined
region's variants, sixth entry; the balanced sites, seventh entry; the small networks, eighth
entry).

    python studies/presence_variants.py --data ../shared/data/busbra \\
        --breast ../shared/data/breast-lesions-usg --out reports/studies
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("presence_variants")

# name -> (what it changes, C, extra "no lesion" strips in training, inputs read, whether both
# hospitals weigh the same in the fit[, the small network's weight penalty alpha instead of a
# logistic regression])
# inputs: "mean" (the shipped features: each encoder stage's mean over space), "max" (the same
# stages' maximum over space), "region" (the same stages averaged over the outlined region),
# "stats" (the mask's highest logit and area share)
VARIANTS = {
    "shipped": ("the check as it ships", 0.1, False, ("mean", "stats"), False),
    "all_strips": ("every lesion-free strip large enough joins the 'no lesion' examples",
                   0.1, True, ("mean", "stats"), False),
    "c_1": ("C = 1 (less regularisation)", 1.0, False, ("mean", "stats"), False),
    "c_0.01": ("C = 0.01 (more regularisation)", 0.01, False, ("mean", "stats"), False),
    "features_only": ("the pooled features alone, without the two mask statistics", 0.1, False,
                      ("mean",), False),
    "mean_and_max": ("the shipped inputs plus each encoder stage's maximum over space", 0.1,
                     False, ("mean", "max", "stats"), False),
    "max_only": ("each encoder stage's maximum over space, with the two mask statistics", 0.1,
                 False, ("max", "stats"), False),
    "mean_and_region": ("the shipped inputs plus each encoder stage averaged over the outlined "
                        "region", 0.1, False, ("mean", "region", "stats"), False),
    "region_only": ("each encoder stage averaged over the outlined region, with the two mask "
                    "statistics", 0.1, False, ("region", "stats"), False),
    "balanced_sites": ("both hospitals weigh the same in the fit", 0.1, False,
                       ("mean", "stats"), True),
    "balanced_all_strips": ("both hospitals weigh the same, every lesion-free strip large "
                            "enough among the 'no lesion' examples", 0.1, True,
                            ("mean", "stats"), True),
    "network": ("a small neural network (one hidden layer of 32 units, five seeds) on the "
                "shipped inputs, alpha = 10", 0.1, False, ("mean", "stats"), False, 10.0),
    "network_alpha_1": ("the same small network with alpha = 1 (less penalty)", 0.1, False,
                        ("mean", "stats"), False, 1.0),
    "network_every_input": ("the small network (alpha = 10) on every input: means, maxima, "
                            "outlined-region averages and the mask statistics", 0.1, False,
                            ("mean", "max", "region", "stats"), False, 10.0),
}
HIDDEN, SEEDS, MAX_ITER = 32, 5, 2000
EXTRA = "extra_window"  # a lesion-free strip that is not the largest: trained on, never scored
MAX_OUTPUT = "features_max"
REGION_OUTPUT = "features_region"


class SmallNetwork:
    """The eighth entry's check: standardised inputs into five one-hidden-layer networks (ReLU),
    whose logits are averaged; written out as arrays so that a graph could compute it."""

    def __init__(self, inputs: np.ndarray, lesion: np.ndarray, alpha: float,
                 hidden: int = HIDDEN, seeds: int = SEEDS, max_iter: int = MAX_ITER) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        inputs = np.asarray(inputs, np.float64)
        self.mean, self.scale = inputs.mean(0), inputs.std(0)
        self.scale[self.scale == 0] = 1.0
        x = (inputs - self.mean) / self.scale
        self.layers = []
        for seed in range(seeds):
            with warnings.catch_warnings():
                # an L-BFGS fit that stops at max_iter is still the fit the plan fixed
                warnings.simplefilter("ignore", ConvergenceWarning)
                net = MLPClassifier((hidden,), alpha=alpha, solver="lbfgs", max_iter=max_iter,
                                    random_state=seed).fit(x, np.asarray(lesion, bool))
            self.layers.append((net.coefs_[0], net.intercepts_[0], net.coefs_[1][:, 0],
                                float(net.intercepts_[1][0])))

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        x = (np.asarray(inputs, np.float64) - self.mean) / self.scale
        return np.mean([np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
                        for w1, b1, w2, b2 in self.layers], axis=0)


def with_study_features(graph: Path, out: Path) -> Path:
    """A copy of a segmenter graph with two more outputs: ``features_max``, beside each mean over
    space that makes up its ``features`` the maximum over space of the same tensor; and
    ``features_region``, the same tensors averaged over the outlined region
    (:func:`with_region_features`). The study reads them; the shipped graph is
    not touched."""
    import onnx
    from onnx import helper

    from busdx.models.contract import FEATURES_OUTPUT

    model = with_region_features(onnx.load(str(graph)))
    nodes = {o: n for n in model.graph.node for o in n.output}
    concat = nodes[FEATURES_OUTPUT]
    maxima = []
    for i, name in enumerate(concat.input):
        mean = nodes[name]
        if mean.op_type != "ReduceMean":
            raise ValueError(f"{graph}: feature {name} is not a mean over space")
        maxima.append(f"/study/ReduceMax_{i}")
        model.graph.node.append(helper.make_node(
            "ReduceMax", [mean.input[0]], [maxima[-1]], name=maxima[-1], axes=[2, 3],
            keepdims=0))
    model.graph.node.append(helper.make_node("Concat", maxima, [MAX_OUTPUT],
                                             name="/study/Concat_max", axis=1))
    model.graph.output.append(helper.make_tensor_value_info(MAX_OUTPUT, onnx.TensorProto.FLOAT,
                                                            None))
    onnx.save(model, str(out))
    return out


def with_region_features(graph):
    """The segmenter graph (an onnx ModelProto with a ``features`` output) with a
    ``features_region`` output: each encoder stage that makes up ``features`` averaged over the
    outlined region instead of the whole image. Each position is weighted by the mask's
    probability there, averaged down to the stage's grid, so that the output describes what was
    outlined (a mass, a shadow, a rib) whatever its share of the image. Probabilities are never
    exactly 0, so an image with nothing outlined still gets a (faint) weighted average."""
    from onnx import TensorProto, helper, numpy_helper

    from busdx.errors import BusdxError
    from busdx.models.contract import FEATURES_OUTPUT, SEGMENTER_OUTPUT
    from busdx.models.graph_edit import with_head

    nodes_by_output = {o: n for n in graph.graph.node for o in n.output}
    if FEATURES_OUTPUT not in nodes_by_output:
        raise BusdxError("the segmenter graph has no features output: export it again")
    stages = [nodes_by_output[pooled].input[0]
              for pooled in nodes_by_output[FEATURES_OUTPUT].input]
    shapes = _tensor_shapes(graph, [SEGMENTER_OUTPUT, *stages])
    size = shapes[SEGMENTER_OUTPUT][-1]
    p = "region/"
    nodes = [helper.make_node("Sigmoid", [SEGMENTER_OUTPUT], [p + "probability"])]
    initializers = [numpy_helper.from_array(np.array(1e-6, np.float32), p + "epsilon")]
    parts = []
    for i, pooled in enumerate(nodes_by_output[FEATURES_OUTPUT].input):
        mean = nodes_by_output[pooled]
        if mean.op_type != "ReduceMean":
            raise BusdxError(f"feature {pooled} of the segmenter graph is not a mean over space")
        stage = mean.input[0]
        side = shapes[stage][-1]
        if size % side:
            raise BusdxError(f"cannot tell the grid of the segmenter's encoder stage {stage}")
        stride, q = size // side, f"{p}{i}/"
        weights = p + "probability" if stride == 1 else q + "weights"
        if stride > 1:
            nodes.append(helper.make_node("AveragePool", [p + "probability"], [weights],
                                          kernel_shape=[stride, stride],
                                          strides=[stride, stride]))
        nodes += [
            helper.make_node("Mul", [stage, weights], [q + "weighted"]),
            helper.make_node("ReduceMean", [q + "weighted"], [q + "numerator"], axes=[2, 3],
                             keepdims=0),
            helper.make_node("ReduceMean", [weights], [q + "area"], axes=[2, 3], keepdims=0),
            helper.make_node("Add", [q + "area", p + "epsilon"], [q + "denominator"]),
            helper.make_node("Div", [q + "numerator", q + "denominator"], [q + "average"]),
        ]
        parts.append(q + "average")
    nodes.append(helper.make_node("Concat", parts, [REGION_OUTPUT], axis=1))
    output = helper.make_tensor_value_info(REGION_OUTPUT, TensorProto.FLOAT, ["batch", None])
    return with_head(graph, p, output, nodes, initializers)


def _tensor_shapes(graph, names: list[str]) -> dict[str, tuple[int, ...]]:
    """The shapes of tensors of ``graph`` for one input of the graph's fixed size, read by running
    a copy that outputs them (shape inference cannot follow the exported encoders' dims)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(graph.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    dims = [d.dim_value or 1 for d in graph.graph.input[0].type.tensor_type.shape.dim]
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(list(names), {graph.graph.input[0].name: np.zeros(dims, np.float32)})
    return {n: v.shape for n, v in zip(names, values, strict=True)}


def _columns(inputs: tuple[str, ...], n_features: int) -> np.ndarray:
    parts = {name: np.arange(k * n_features, (k + 1) * n_features)
             for k, name in enumerate(("mean", "max", "region"))}
    parts["stats"] = np.arange(3 * n_features, 3 * n_features + 2)
    return np.concatenate([parts[name] for name in inputs])


def _examples(records):
    """The shipped check's examples of each record, then its other lesion-free strips."""
    from busdx.data.preprocess import load_mask
    from busdx.data.windows import lesion_free_window, lesion_free_windows
    from busdx.evaluation.appearance import scan_of
    from busdx.evaluation.presence import examples
    from busdx.inference.decode import decode

    for i, kind, image in examples(records):
        yield i, kind, image
        if kind != "image":
            continue
        record = records[i]
        decoded = decode(str(record.image_path))
        mask = load_mask(record.mask_path)
        if mask.shape != decoded.image.shape:
            continue
        largest = lesion_free_window(mask)
        for strip in lesion_free_windows(mask):
            if strip != largest:
                yield i, EXTRA, scan_of(np.ascontiguousarray(strip.cut(decoded.image)))


def collect(data: str, breast: str, models: str | None, threads: int = 2) -> dict:
    """Every variant's logit for each scored example (BUS-BRA validation; BrEaST-dev out of
    fold), with the examples' kinds and whether the outline found anything."""
    import itertools
    import tempfile

    from busdx.data.index import load_index, resolve_root
    from busdx.data.sites import busbra_records, read_breast
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation import presence as pr
    from busdx.inference.models import default_models_dir, open_session
    from busdx.models.contract import FEATURES_OUTPUT
    from busdx.release import load_release

    models_dir = Path(models) if models else default_models_dir()
    release = load_release(models_dir / "release.json")
    with tempfile.TemporaryDirectory() as tmp:
        graph = with_study_features(models_dir / release.segmenter.file, Path(tmp) / "study.onnx")
        session = open_session(graph, threads, batch=1)
    t = release.segmenter.threshold
    mask_logit = float(np.log(t / (1 - t)))
    index = load_index(resolve_root(data))
    split = make_split(index, SplitConfig(test_fold=5))
    busbra = {r.id: r for r in busbra_records(index)}
    dev = [r for r in read_breast(breast) if r.split == "dev"]

    def part(records, what):
        read = itertools.count(1)

        def progress() -> None:
            if (n := next(read)) % 500 == 0:
                log.info("%d examples read", n)

        x, kinds, positions = pr.example_inputs(
            session, _examples(records), 224, mask_logit, progress,
            features=(FEATURES_OUTPUT, MAX_OUTPUT, REGION_OUTPUT))
        log.info("%s: %d examples", what, len(kinds))
        return x, np.array(kinds), np.array([records[i].id for i in positions])

    x_train, k_train, _ = part([busbra[r.id] for r in split.train], "BUS-BRA training")
    x_val, k_val, g_val = part([busbra[r.id] for r in split.val], "BUS-BRA validation")
    x_dev, k_dev, g_dev = part(dev, "BrEaST development half")
    scored_val, scored_dev = k_val != EXTRA, k_dev != EXTRA
    rows = {"model_version": release.version,
            "val": {"kinds": k_val[scored_val].tolist(), "ids": g_val[scored_val].tolist(),
                    "outlined": (x_val[scored_val, -1] > 0).tolist()},
            "breast_dev": {"kinds": k_dev[scored_dev].tolist(), "ids": g_dev[scored_dev].tolist(),
                           "outlined": (x_dev[scored_dev, -1] > 0).tolist()},
            "variants": {}}
    n_features = (x_train.shape[1] - 2) // 3
    for name, (_, c, extra, inputs, balanced, *network) in VARIANTS.items():
        columns = _columns(inputs, n_features)
        fitter = (lambda x, y, w, alpha=network[0]: SmallNetwork(x, y, alpha)) if network \
            else (lambda x, y, w, c=c: pr.fit(x, y, c, w))
        train = np.ones(len(k_train), bool) if extra else k_train != EXTRA
        devfit = np.ones(len(k_dev), bool) if extra else k_dev != EXTRA
        y_train, y_dev = np.isin(k_train, pr.LESION), np.isin(k_dev, pr.LESION)
        weights = pr.site_weights(np.repeat([0, 1], [int(train.sum()), int(devfit.sum())])) \
            if balanced else None
        model = fitter(np.concatenate([x_train[train][:, columns], x_dev[devfit][:, columns]]),
                       np.concatenate([y_train[train], y_dev[devfit]]), weights)
        oof = np.full(len(k_dev), np.nan)
        oof[devfit] = pr.out_of_fold(x_dev[devfit][:, columns], y_dev[devfit], g_dev[devfit],
                                     (x_train[train][:, columns], y_train[train]), c=c,
                                     balance_sites=balanced, fitter=fitter)
        rows["variants"][name] = {
            "val": model.logits(x_val[scored_val][:, columns]).round(6).tolist(),
            "breast_dev": oof[scored_dev].round(6).tolist()}
        log.info("%s fitted", name)
    return rows


def summarise(rows: dict) -> dict:
    from busdx.evaluation.presence import shares, threshold_keeping

    out = {"model_version": rows["model_version"], "variants": {}}
    for name, scores in rows["variants"].items():
        sites = {"busbra_validation": ("val", np.array(scores["val"])),
                 "breast_dev_out_of_fold": ("breast_dev", np.array(scores["breast_dev"]))}
        threshold = threshold_keeping({
            name: s[np.array(rows[part]["kinds"]) == "image"] for name, (part, s) in
            sites.items()})
        result = {"what": VARIANTS[name][0] if name in VARIANTS else name,
                  "threshold": threshold}
        for site, (part, s) in sites.items():
            result[site] = shares(rows[part]["kinds"], s, rows[part]["outlined"],
                                  threshold)["check_and_outline"]
        result["worth_a_release"] = all(
            result[site]["found"]["share"] >= 0.98 and result[site]["no_lesion"]["share"] >= 0.90
            for site in sites)
        out["variants"][name] = result
        if name == "shipped":
            # which of the other hospital's lesion-free images the shipped check still calls
            # "lesion" out of fold: what a next check has to learn (the study's figure)
            part = rows["breast_dev"]
            kinds = np.array(part["kinds"])
            called = (np.array(scores["breast_dev"]) >= threshold) & np.array(part["outlined"])
            missed = np.isin(kinds, ("window", "normal")) & called
            out["breast_dev_normal_scans"] = int((kinds == "normal").sum())
            out["shipped_lesion_free_called_lesion"] = [
                {"id": part["ids"][j], "kind": str(kinds[j])} for j in np.flatnonzero(missed)]
    return out


FIGURE = "presence_variants_missed.png"


def figure(result: dict, breast: str, out: Path) -> Path:
    """The BrEaST-dev lesion-free images the shipped check calls "lesion" out of fold, as the
    check sees them (each scaled to a square tile)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from busdx.data.sites import read_breast
    from busdx.evaluation.appearance import site_examples

    wanted = {(m["id"], m["kind"]) for m in result["shipped_lesion_free_called_lesion"]}
    records = [r for r in read_breast(breast) if r.split == "dev"
               and any(r.id == i for i, _ in wanted)]
    shown = [(records[i].id, kind, image) for i, kind, image in site_examples(records)
             if (records[i].id, kind) in wanted]
    cols = 4
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, kind, image) in zip(axes.flat, shown, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{name}, {'normal scan' if kind == 'normal' else 'lesion-free window'}",
                     fontsize=9)
    fig.suptitle("BrEaST-dev lesion-free images the shipped presence check calls 'lesion' "
                 "(out of fold)", fontsize=10)
    fig.tight_layout()
    path = out / FIGURE
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def describe(result: dict, args, out: Path) -> None:
    if result.get("shipped_lesion_free_called_lesion") and getattr(args, "breast", None):
        log.info("wrote %s", figure(result, args.breast, out))
    for name, r in result["variants"].items():
        parts = [f"{site}: 'no lesion' {r[site]['no_lesion']['hits']}/{r[site]['no_lesion']['n']}"
                 f", found {r[site]['found']['hits']}/{r[site]['found']['n']}"
                 for site in ("busbra_validation", "breast_dev_out_of_fold")]
        log.info("%-14s %s%s", name, "; ".join(parts),
                 "  <- worth a release" if r["worth_a_release"] else "")


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "presence_variants",
                     lambda a: collect(a.data, a.breast, a.models, a.threads),
                     summarise, describe, argv, breast=True)


if __name__ == "__main__":
    raise SystemExit(main())
