"""Does the product say "no lesion" when there is none? Measured on lesion-free windows
(busdx.data.windows) of held-out images, each analysed as an image of its own through
``busdx.inference.analyze``, as a user's crop of normal tissue would be; a scan without a lesion
(BrEaST's normal scans) counts as one such image. The same images whole tell whether the lesions
are still found.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from busdx.data.sites import SiteRecord
from busdx.data.windows import GROW, MIN_SIDE, lesion_free_cut

log = logging.getLogger(__name__)


def _share(hits: int, n: int) -> dict:
    from busdx.evaluation.classification import wilson_interval

    return {"n": n, "hits": hits, "share": hits / n if n else None,
            "share_ci95": list(wilson_interval(hits, n)) if n else None}


def score_no_lesion(records: Sequence[SiteRecord], models, progress=None) -> dict:
    """Per site: the share of lesion-free windows (and normal scans) reported as "no lesion",
    and the share of whole lesion images in which a lesion is found."""
    from busdx.data.preprocess import load_mask
    from busdx.inference.decode import decode
    from busdx.inference.pipeline import analyze

    per_site: dict[str, dict[str, list[int]]] = {}
    rows = []
    for record in records:
        site = per_site.setdefault(record.site, {"windows": [], "normal": [], "found": []})
        decoded = decode(str(record.image_path))
        if record.mask_path is None:
            result = analyze(decoded, models, render_overlays=False)
            site["normal"].append(int(not result.lesion_found))
            rows.append({"id": record.id, "site": record.site, "what": "normal scan",
                         "no_lesion": not result.lesion_found})
        else:
            whole = analyze(decoded, models, render_overlays=False)
            site["found"].append(int(whole.lesion_found))
            crop = lesion_free_cut(decoded.image, load_mask(record.mask_path))
            row = {"id": record.id, "site": record.site, "lesion_found": whole.lesion_found}
            if crop is not None:
                result = analyze(crop, models, render_overlays=False)
                site["windows"].append(int(not result.lesion_found))
                row["window_no_lesion"] = not result.lesion_found
            rows.append(row)
        if progress is not None:
            progress()
    summary = {}
    for name, s in per_site.items():
        free = s["windows"] + s["normal"]
        summary[name] = {
            "lesion_free_reported_no_lesion": _share(sum(free), len(free)),
            "windows": _share(sum(s["windows"]), len(s["windows"])),
            "normal_scans": _share(sum(s["normal"]), len(s["normal"])),
            "lesion_images_with_a_lesion_found": _share(sum(s["found"]), len(s["found"])),
        }
    return {"sites": summary, "rows": rows, "grow": GROW, "min_side": MIN_SIDE}
