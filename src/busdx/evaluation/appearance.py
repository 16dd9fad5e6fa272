"""The appearance check: does an image look like the breast ultrasound images the segmenter
learnt from? A learned complement to the grey-level statistics of busdx.inference.quality.

The segmenter's graph outputs its encoder's feature maps averaged over space, stage by stage
(``features``). A Gaussian with a shrunk covariance (Ledoit-Wolf) is fitted to the features of
the images the release learnt from, and the graph gains an ``appearance`` output: the image's
Mahalanobis distance from them. Far from every training image, an upload is more likely a
photograph, a chart or another kind of scan than a breast ultrasound, and the product says so.

How it is fitted and judged was fixed before any image outside the fitting set was scored
(docs/generalisation_plan.md, "Is it an ultrasound at all?"): the fit uses BUS-BRA's training
patients and BrEaST's development half, each image with its lesion-free window; the threshold
is the 99th percentile of the distances of BUS-BRA's validation patients' images and windows;
the results are the shares warned on BUS-BRA's test fold, BrEaST's test half and a set of images
that are not breast ultrasound at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from busdx.data.preprocess import load_mask, prepare
from busdx.data.sites import SiteRecord
from busdx.data.windows import lesion_free_cut, lesion_window_cut
from busdx.errors import BusdxError
from busdx.inference.decode import decode
from busdx.inference.scan_area import bounding, find_scan_area_within
from busdx.models.contract import APPEARANCE_OUTPUT, FEATURES_OUTPUT, INPUT_NAME

log = logging.getLogger(__name__)

# the share of held-out training-site images (validation patients) that may be warned
PERCENTILE = 99.0


@dataclass(frozen=True)
class AppearanceModel:
    mean: np.ndarray  # [D]
    whitening: np.ndarray  # [D, D]: (f - mean) @ whitening has identity covariance
    n: int  # images fitted on
    shrinkage: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) @ self.whitening
        return np.sqrt((z * z).sum(axis=1))


def fit(features: np.ndarray) -> AppearanceModel:
    """The Gaussian of ``features`` [n, D], its covariance shrunk towards a scaled identity
    (Ledoit-Wolf): with a few thousand images in 500-odd dimensions the plain estimate's
    smallest directions are noise, which would make every new image look far away."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, np.float64)
    lw = LedoitWolf().fit(features)
    values, vectors = np.linalg.eigh(lw.covariance_)
    whitening = vectors / np.sqrt(np.maximum(values, 1e-12))
    return AppearanceModel(lw.location_, whitening, len(features), float(lw.shrinkage_))


def scan_of(image: np.ndarray, regions=()) -> np.ndarray:
    """The part of a decoded image the product analyses (its scan area)."""
    area = find_scan_area_within(image, bounding([r.area for r in regions]))
    return image if area.is_whole(image.shape) else area.crop(image)


def site_examples(records: Sequence[SiteRecord], lesion_windows: bool = False
                  ) -> Iterator[tuple[int, str, np.ndarray]]:
    """(record's position, kind, the image the product would analyse) for each record: the
    lesion image ("image") and its lesion-free window ("window", busdx.data.windows) analysed as
    an image of its own, or the scan of a normal record ("normal"); with ``lesion_windows``
    also, between the two, a window-sized cut over the lesion ("lesion_window")."""
    for i, record in enumerate(records):
        decoded = decode(str(record.image_path))
        if record.mask_path is None:
            yield i, "normal", scan_of(decoded.image, decoded.regions)
            continue
        yield i, "image", scan_of(decoded.image, decoded.regions)
        mask = load_mask(record.mask_path)
        if lesion_windows:
            cut = lesion_window_cut(decoded.image, mask)
            if cut is not None:
                yield i, "lesion_window", scan_of(cut)
        cut = lesion_free_cut(decoded.image, mask)
        if cut is not None:
            yield i, "window", scan_of(cut)


def site_images(records: Sequence[SiteRecord]) -> Iterator[tuple[str, np.ndarray]]:
    """(kind, image) of :func:`site_examples`: each image and its lesion-free window."""
    for _, kind, image in site_examples(records):
        yield kind, image


def folder_images(folder: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every image in ``folder`` the product can decode (pictures that are not breast
    ultrasound: each must be refused or warned)."""
    from busdx.inference.errors import InputError

    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix in (".md", ".txt"):
            continue
        try:
            decoded = decode(str(path))
        except InputError as err:  # refused outright: as good as a warning
            log.info("%s refused: %s", path.name, err)
            yield path.name, None
            continue
        yield path.name, scan_of(decoded.image, decoded.regions)


def segmenter_outputs(session, images: Iterable[np.ndarray], size: int, output: str,
                      progress: Callable[[], object] | None = None) -> np.ndarray:
    """One row of the segmenter's ``output`` per image (features or appearance)."""
    rows = []
    for image in images:
        x, _ = prepare(image, size)
        rows.append(np.asarray(session.run([output], {INPUT_NAME: x[None, None]})[0],
                               np.float64).reshape(-1))
        if progress is not None:
            progress()
    return np.stack(rows) if rows else np.zeros((0, 0))


def with_appearance_output(graph, model: AppearanceModel):
    """The segmenter graph (an onnx ModelProto with a ``features`` output) with an
    ``appearance`` output: the Mahalanobis distance of its features from ``model``'s mean. A
    refit replaces the previous one in place (busdx.models.graph_edit)."""
    from onnx import TensorProto, helper, numpy_helper

    from busdx.models.graph_edit import with_head

    if FEATURES_OUTPUT not in [o.name for o in graph.graph.output]:
        raise BusdxError("the segmenter graph has no features output: export it again")
    initializers = [
        numpy_helper.from_array(model.mean.astype(np.float32), "appearance/mean"),
        numpy_helper.from_array(model.whitening.astype(np.float32), "appearance/whitening"),
        numpy_helper.from_array(np.array([1], np.int64), "appearance/axes"),
    ]
    nodes = [
        helper.make_node("Sub", [FEATURES_OUTPUT, "appearance/mean"], ["appearance/centred"]),
        helper.make_node("MatMul", ["appearance/centred", "appearance/whitening"],
                         ["appearance/white"]),
        helper.make_node("Mul", ["appearance/white", "appearance/white"],
                         ["appearance/squared"]),
        helper.make_node("ReduceSum", ["appearance/squared", "appearance/axes"],
                         ["appearance/sum"], keepdims=0),
        helper.make_node("Sqrt", ["appearance/sum"], [APPEARANCE_OUTPUT]),
    ]
    output = helper.make_tensor_value_info(APPEARANCE_OUTPUT, TensorProto.FLOAT, ["batch"])
    return with_head(graph, "appearance/", output, nodes, initializers)


def warned_share(flags: Sequence[bool]) -> dict:
    """How many of the images (one flag each) were warned or refused, with a Wilson 95% CI."""
    from busdx.evaluation.classification import wilson_interval

    n, hits = len(flags), int(sum(bool(f) for f in flags))
    return {"n": n, "warned": hits, "share": hits / n if n else None,
            "share_ci95": list(wilson_interval(hits, n)) if n else None}
