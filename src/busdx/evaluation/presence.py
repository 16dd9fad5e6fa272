"""The presence check: does the image show a lesion at all?

The outline network was trained on images that all show a lesion, and outlines something in
almost every lesion-free image. Retraining it with empty masks on this project's CPU cost Dice,
so the check is a logistic regression on what one run of the network already gives: its
encoder's features averaged over space (the graph's ``features`` output) and two numbers from its
mask (the highest lesion logit, the share of the input above the mask threshold). It is fitted
on both hospitals, lesion images and lesion windows (a lesion at the scale of a lesion-free
window, busdx.data.windows.lesion_window_cut) against lesion-free windows and normal scans, and
written into the segmenter graph as a ``presence`` output (a logit). Below the release's
``presence_threshold`` the product reports "no lesion".

How it is fitted, thresholded and judged was fixed before it was scored
(docs/generalisation_plan.md, "a presence check trained on both hospitals"): the threshold keeps
at least 99% of held-out lesion images on each site, BUS-BRA's validation patients and BrEaST's
development half scored out of fold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from busdx.data.preprocess import prepare
from busdx.data.sites import SiteRecord
from busdx.errors import BusdxError
from busdx.evaluation.appearance import site_examples
from busdx.models.contract import FEATURES_OUTPUT, INPUT_NAME, PRESENCE_OUTPUT, SEGMENTER_OUTPUT

log = logging.getLogger(__name__)

C = 0.1  # the logistic regression's inverse regularisation, as in studies/presence_gate.py
KEEP = 0.99  # the share of held-out lesion images each site's threshold keeps
FOLDS = 5  # BrEaST-dev is scored out of fold: its scans are also fitted on
LESION = ("image", "lesion_window")  # the kinds of example that show a lesion


@dataclass(frozen=True)
class PresenceModel:
    """A linear logit on the check's inputs, the standardisation folded in."""

    weights: np.ndarray  # [D + 2]
    bias: float
    n: int  # examples fitted on

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(inputs, np.float64) @ self.weights + self.bias


def mask_statistics(logits: np.ndarray, mask_logit: float = 0.0) -> np.ndarray:
    """[N, 2]: each image's highest lesion logit and the share of the input above
    ``mask_logit`` (the mask threshold as a logit), from the segmenter's [N, 1, H, W] output."""
    flat = np.asarray(logits, np.float64).reshape(len(logits), -1)
    return np.stack([flat.max(axis=1), (flat > mask_logit).mean(axis=1)], axis=1)


def check_inputs(session, images: Iterable[np.ndarray], size: int, mask_logit: float = 0.0,
                 progress: Callable[[], object] | None = None,
                 features: Sequence[str] = (FEATURES_OUTPUT,)) -> np.ndarray:
    """One row of the check's inputs per image: the ``features`` outputs in order, then the
    mask statistics."""
    rows = []
    for image in images:
        x, _ = prepare(image, size)
        logits, *read = session.run([SEGMENTER_OUTPUT, *features], {INPUT_NAME: x[None, None]})
        rows.append(np.concatenate([*(np.asarray(f, np.float64).reshape(-1) for f in read),
                                    mask_statistics(logits, mask_logit)[0]]))
        if progress is not None:
            progress()
    return np.stack(rows) if rows else np.zeros((0, 0))


def example_inputs(session, found: Iterable[tuple[int, str, np.ndarray]], size: int,
                   mask_logit: float = 0.0, progress: Callable[[], object] | None = None,
                   features: Sequence[str] = (FEATURES_OUTPUT,)
                   ) -> tuple[np.ndarray, list[str], list[int]]:
    """:func:`check_inputs` of the images of ``found`` ((record's position, kind, image), as
    :func:`examples` gives them), read one at a time so that they are never all in memory;
    with each row's kind and record position."""
    kinds: list[str] = []
    positions: list[int] = []

    def images() -> Iterator[np.ndarray]:
        for position, kind, image in found:
            positions.append(position)
            kinds.append(kind)
            yield image

    return (check_inputs(session, images(), size, mask_logit, progress, features), kinds,
            positions)


def examples(records: Sequence[SiteRecord]) -> Iterator[tuple[int, str, np.ndarray]]:
    """(record's position, kind, image) for each record, lesion windows included
    (busdx.evaluation.appearance.site_examples)."""
    return site_examples(records, lesion_windows=True)


def site_weights(sites: Sequence) -> np.ndarray:
    """Each row's weight so that every site (one label per row) carries the same total weight
    in a fit; the weights average 1, so that C keeps its meaning."""
    sites = np.asarray(sites)
    names, counts = np.unique(sites, return_counts=True)
    per_site = {name: len(sites) / (len(names) * count)
                for name, count in zip(names.tolist(), counts.tolist(), strict=True)}
    return np.array([per_site[s] for s in sites.tolist()], np.float64)


def fit(inputs: np.ndarray, lesion: np.ndarray, c: float = C,
        weights: np.ndarray | None = None) -> PresenceModel:
    """Logistic regression (inverse regularisation ``c``) of ``lesion`` (bool per row) on
    standardised ``inputs``, each row counted ``weights`` times (once without)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    inputs, lesion = np.asarray(inputs, np.float64), np.asarray(lesion, bool)
    if lesion.all() or not lesion.any():
        raise BusdxError("the presence check needs examples with and without a lesion")
    scaler = StandardScaler().fit(inputs, sample_weight=weights)
    model = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(inputs), lesion,
                                                       sample_weight=weights)
    weights = model.coef_[0] / scaler.scale_
    bias = float(model.intercept_[0] - (model.coef_[0] * scaler.mean_ / scaler.scale_).sum())
    return PresenceModel(weights, bias, len(inputs))


def out_of_fold(inputs: np.ndarray, lesion: np.ndarray, groups: np.ndarray,
                always: tuple[np.ndarray, np.ndarray], folds: int = FOLDS, seed: int = 0,
                c: float = C, balance_sites: bool = False, fitter=None) -> np.ndarray:
    """Each row's logit from a check fitted without its group (a patient's record): on
    ``always`` (inputs and labels fitted in every fold, another site's) and the other folds'
    groups. Groups go to folds in a seeded shuffle. ``balance_sites``: each fit weighs
    ``always`` and the rows it keeps of ``inputs`` the same (:func:`site_weights`).
    ``fitter(inputs, lesion, weights)``: another fit than :func:`fit` with ``c``, returning
    anything with a ``logits(inputs)`` method."""
    fitter = fitter or (lambda x, y, w: fit(x, y, c, w))
    order = np.random.default_rng(seed).permutation(np.unique(groups))
    fold_of = {g: i % folds for i, g in enumerate(order.tolist())}
    fold = np.array([fold_of[g] for g in np.asarray(groups).tolist()])
    scores = np.empty(len(inputs))
    for k in range(folds):
        held = fold == k
        weights = site_weights(np.repeat([0, 1], [len(always[0]), int((~held).sum())])) \
            if balance_sites else None
        model = fitter(np.concatenate([always[0], inputs[~held]]),
                       np.concatenate([always[1], lesion[~held]]), weights)
        scores[held] = model.logits(inputs[held])
    return scores


def threshold_keeping(lesion_scores: dict[str, np.ndarray], keep: float = KEEP) -> float:
    """The highest logit that keeps at least ``keep`` of each site's lesion images (a site
    without any is passed over)."""
    cuts = []
    for scores in lesion_scores.values():
        scores = np.sort(np.asarray(scores, np.float64))
        if scores.size:
            # at most floor((1 - keep) n) images may fall below the threshold
            cuts.append(float(scores[int(np.floor((1 - keep) * scores.size + 1e-9))]))
    if not cuts:
        raise BusdxError("no held-out lesion images to set the presence threshold on")
    return min(cuts)


def shares(kinds: Sequence[str], scores: np.ndarray, outlined: np.ndarray, threshold: float
           ) -> dict:
    """The shares a check at ``threshold`` gives: lesion-free images reported as "no lesion"
    and lesion images still found, by the check alone and with the outline (a lesion is
    reported when the outline finds one and the check agrees)."""
    from busdx.evaluation.classification import wilson_interval

    kinds = np.asarray(kinds)
    present = np.asarray(scores) >= threshold
    both = present & np.asarray(outlined, bool)

    def share(mask: np.ndarray, hits: np.ndarray) -> dict:
        n, k = int(mask.sum()), int((hits & mask).sum())
        return {"hits": k, "n": n, "share": k / n if n else None,
                "share_ci95": list(wilson_interval(k, n)) if n else None}

    free = (kinds == "window") | (kinds == "normal")
    out = {}
    for name, found in (("check", present), ("check_and_outline", both),
                        ("outline", np.asarray(outlined, bool))):
        out[name] = {"no_lesion": share(free, ~found), "found": share(kinds == "image", found),
                     "lesion_windows_found": share(kinds == "lesion_window", found)}
    return out


def with_presence_output(graph, model: PresenceModel, mask_logit: float = 0.0):
    """The segmenter graph (an onnx ModelProto with a ``features`` output) with a ``presence``
    output: the check's logit, computed from the features and the mask logits. A refit replaces
    the previous one in place (busdx.models.graph_edit)."""
    from onnx import TensorProto, helper, numpy_helper

    from busdx.models.graph_edit import with_head

    if FEATURES_OUTPUT not in [o.name for o in graph.graph.output]:
        raise BusdxError("the segmenter graph has no features output: export it again")
    p = "presence/"
    initializers = [
        numpy_helper.from_array(model.weights.astype(np.float32).reshape(-1, 1), p + "weights"),
        numpy_helper.from_array(np.array([model.bias], np.float32), p + "bias"),
        numpy_helper.from_array(np.array(mask_logit, np.float32), p + "mask_logit"),
        numpy_helper.from_array(np.array([1], np.int64), p + "axis1"),
    ]
    nodes = [
        helper.make_node("ReduceMax", [SEGMENTER_OUTPUT], [p + "max"], axes=[1, 2, 3],
                         keepdims=0),
        helper.make_node("Greater", [SEGMENTER_OUTPUT, p + "mask_logit"], [p + "above"]),
        helper.make_node("Cast", [p + "above"], [p + "above_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", [p + "above_float"], [p + "share"], axes=[1, 2, 3],
                         keepdims=0),
        helper.make_node("Unsqueeze", [p + "max", p + "axis1"], [p + "max_column"]),
        helper.make_node("Unsqueeze", [p + "share", p + "axis1"], [p + "share_column"]),
        helper.make_node("Concat", [FEATURES_OUTPUT, p + "max_column", p + "share_column"],
                         [p + "inputs"], axis=1),
        helper.make_node("MatMul", [p + "inputs", p + "weights"], [p + "product"]),
        helper.make_node("Add", [p + "product", p + "bias"], [p + "logit_column"]),
        helper.make_node("Squeeze", [p + "logit_column", p + "axis1"], [PRESENCE_OUTPUT]),
    ]
    output = helper.make_tensor_value_info(PRESENCE_OUTPUT, TensorProto.FLOAT, ["batch"])
    return with_head(graph, p, output, nodes, initializers)
