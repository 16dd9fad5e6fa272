"""The model card's ``input_check`` section: the ranges of image statistics that the training
images span (busdx.inference.quality), and how often images inside the product's own data fall
outside them (validation, and the test fold for the record; nothing is chosen on either)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from busdx.data.index import load_index, resolve_root
from busdx.data.splits import SplitConfig, make_split
from busdx.inference.decode import decode
from busdx.inference.quality import (
    DESCRIPTIONS,
    PERCENTILES,
    STATISTICS,
    check_image,
    fit_long_side,
    fit_ranges,
    image_statistics,
)

log = logging.getLogger(__name__)


def _long_side(records: Sequence) -> int:
    from PIL import Image

    shapes = []
    for r in records:
        with Image.open(r.image_path) as img:  # reads the header only
            shapes.append((img.height, img.width))
    return fit_long_side(shapes)


def _statistics(records: Sequence, what: str, long_side: int) -> list[dict[str, float]]:
    from tqdm import tqdm

    return [image_statistics(decode(str(r.image_path)).image, long_side)
            for r in tqdm(records, desc=what, leave=False)]


def _flagged(records: Sequence, ranges: dict[str, list[float]], long_side: int
             ) -> dict[str, Any]:
    outside = [check_image(decode(str(r.image_path)).image, ranges, long_side).outside
               for r in records]
    return {
        "n": len(records),
        "unusual": int(sum(bool(o) for o in outside)),
        "fraction_unusual": float(np.mean([bool(o) for o in outside])) if outside else 0.0,
        "by_statistic": {s: int(sum(s in o for o in outside)) for s in STATISTICS},
    }


def input_check_section(
    data: str | None, test_fold: int = 5, split_seed: int = 0,
    percentiles: tuple[float, float] = PERCENTILES,
) -> dict[str, Any]:
    """Fit the ranges on the training split the bundled networks learnt from and count the
    validation and test images outside them."""
    split = make_split(load_index(resolve_root(data)), SplitConfig(test_fold=test_fold,
                                                                   seed=split_seed))
    long_side = _long_side(split.train)
    ranges = fit_ranges(_statistics(split.train, "training images", long_side), percentiles)
    section = {
        "what": "a warning, never a refusal, for images whose gray-level statistics lie outside "
                "what the training images span: there the operating point frozen on validation "
                "may not hold (see the robustness study)",
        "statistics": dict(DESCRIPTIONS),
        "ranges": ranges,
        "texture_long_side": long_side,
        "rule": f"the {percentiles[0]:g}th to {percentiles[1]:g}th percentiles over the "
                f"{len(split.train)} training images, fold {test_fold} and the validation "
                "patients left out; the texture on images shrunk to their median long side "
                f"({long_side} px) when larger",
        "validation": _flagged(split.val, ranges, long_side),
        "test": _flagged(split.test, ranges, long_side),
    }
    log.info("input check: ranges %s; validation %d/%d unusual, test fold %d/%d",
             {k: [round(v, 4) for v in r] for k, r in ranges.items()},
             section["validation"]["unusual"], section["validation"]["n"],
             section["test"]["unusual"], section["test"]["n"])
    return section
