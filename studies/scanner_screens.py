"""A scanner's DICOM is a screen: what do the annotations around the scan cost, and do the
file's declared ultrasound regions give the scan back?

A scanner stores its screen, not the scan alone: a title line, a column of settings, a depth
scale and a body marker sit around the scan, and a dual-view screen puts the two planes side by
side, often with no gap between them. The black frame rule (busdx.inference.scan_area) has to
tell the annotations from the scan, and without a gap the panes cannot be found from the pixels
at all. A DICOM file also declares where each scan is (SequenceOfUltrasoundRegions), and the
product reads that first.

Every VALIDATION image (patient-wise, fold 5 not read) is put on such a screen (drawn here:
pixel values 0-3 of 255 for black, text and marks at full brightness; the scan is unchanged)
and read through the product's own analysis in four ways:

- plain: the image file itself (the reference);
- uncut: the screen analysed whole (``trim_margins=False``), what the screen would cost;
- screenshot: the screen as an image with no declared regions (a PNG export): the black frame
  rule, annotations and all;
- DICOM: the screen in a DICOM file declaring the scan's region, as scanners write it.

Per reading: the AUC, sensitivity and specificity at the frozen threshold, the calls that flip
against the plain image, and how many screens were cut to exactly the scan, to within ``NEAR``
pixels of it on every edge without losing any of what it shows (a faded far field's black last
rows may go, as on any framed image), or into what the scan shows; and where the cut falls on
the same screenshot saved as a JPEG (no analysis: the compression alone changes calls, which
studies/robustness.py measures). Then every
validation lesion with both halves is put on a dual-view screen with the two panes touching,
and read as one lesion from the DICOM's two regions (``analyze(pane=...)``), against the two
original images read as one lesion; the same screen as a screenshot is refused (no gap).
Descriptive: no model or threshold is chosen by it.

    python studies/scanner_screens.py --data ../shared/data/busbra --out reports/studies
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("scanner_screens")

SEED = 0
# the screen's margins around the scan, as fractions of the scan's height (top, bottom) and
# width (left, right): a settings column on the left, a depth scale on the right; at least
# MIN_MARGINS pixels, so that no annotation touches the scan
MARGINS = (0.12, 0.08, 0.24, 0.12)
MIN_MARGINS = (20, 12, 64, 36)
SETTINGS = ("Gn 52", "DR 66", "FR 27", "D 4.0cm", "Frq 12M", "AO 100%", "MI 1.1", "TIS 0.3",
            "Focus 1.8", "SRI 3", "CRI 2", "Map G")
JPEG_QUALITY = 85
MM_PER_PIXEL = 0.08  # the declared regions' calibration (a 12 MHz linear probe's order)


def screen(scans: list[np.ndarray], rng: np.random.Generator
           ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The scans side by side, touching, on a scanner's screen: an 8-bit image and each scan's
    (left, top, width, height) on it."""
    from PIL import Image, ImageDraw

    h = max(s.shape[0] for s in scans)
    w = sum(s.shape[1] for s in scans)
    top, bottom, left, right = (max(m, round(f * side)) for f, m, side in zip(
        MARGINS, MIN_MARGINS, (h, h, w / len(scans), w / len(scans)), strict=True))
    shape = (top + h + bottom, left + w + right)
    canvas = rng.integers(0, 4, shape).astype(np.uint8)
    boxes, x = [], left
    for s in scans:
        canvas[top:top + s.shape[0], x:x + s.shape[1]] = np.round(s * 255).astype(np.uint8)
        boxes.append((x, top, s.shape[1], s.shape[0]))
        x += s.shape[1]
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), "BREAST US  L12-5  RIGHT  2026-11-28 10:41", fill=255)
    step = max(12, h // (len(SETTINGS) + 2))
    for i, line in enumerate(SETTINGS):
        draw.text((4, top + 4 + i * step), line, fill=235)
    scale_x = left + w + 3
    for i in range(9):  # a depth mark every eighth of the depth, numbered
        y = top + round(i * (h - 1) / 8)
        draw.line([(scale_x, y), (scale_x + 6, y)], fill=255)
        draw.text((scale_x + 9, max(0, y - 5)), f"{i / 2:g}", fill=255)
    marker = (6, shape[0] - bottom - 40, 46, shape[0] - bottom)  # the body marker
    draw.ellipse(marker, outline=255)
    draw.line([(16, marker[1] + 20), (36, marker[1] + 14)], fill=255, width=2)
    return np.asarray(img), boxes


def screen_dicom(pixels: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> bytes:
    """``pixels`` (8-bit gray) as an ultrasound DICOM file declaring each box as a 2-D tissue
    region calibrated in cm, as scanners write them."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[str(pixels.shape), str(int(pixels.sum()))])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    regions = []
    for x, y, w, h in boxes:
        region = Dataset()
        region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
        region.RegionLocationMinX0, region.RegionLocationMinY0 = x, y
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x + w - 1, y + h - 1
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = region.PhysicalDeltaY = MM_PER_PIXEL / 10.0
        regions.append(region)
    ds.SequenceOfUltrasoundRegions = Sequence(regions)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


NEAR = 8  # pixels an analysed area's edge may lie off the scan's and count as near


def _fit(area, box: tuple[int, int, int, int], shape: tuple[int, int],
         scan: np.ndarray) -> dict[str, bool]:
    """How the analysed area fits the scan's box: exactly; every edge within NEAR pixels without
    losing anything of the scan but black rows or columns (a faded far field's last rows, which
    the black frame rule takes for frame on any framed image); or cutting into what the scan
    shows (a row or column of it that is not black)."""
    x, y, w, h = box
    top, left, bottom, right = ((area.top, area.left, area.bottom, area.right) if area
                                else (0, 0, *shape))
    # black, as the black frame rule defines it: under FRACTION of the pixels above LEVEL
    from busdx.inference.scan_area import FRACTION, LEVEL

    lit = scan > LEVEL
    rows, cols = lit.mean(axis=1), lit.mean(axis=0)
    lost = np.concatenate([rows[:max(0, top - y)], rows[max(0, bottom - y):],
                           cols[:max(0, left - x)], cols[max(0, right - x):]])
    cut_into = bool((lost >= FRACTION).any())
    edges = (y - top, x - left, bottom - (y + h), right - (x + w))
    return {"exact": max(map(abs, edges)) == 0,
            "near": max(map(abs, edges)) <= NEAR and not cut_into, "cut_into": cut_into}


def image_row(i: int, record, models, baseline=None) -> dict:
    """The ``i``-th validation image read as itself, on a screen (annotations seeded by
    ``i``) uncut, as a screenshot and as a DICOM declaring its scan; and where the cut falls in
    the screenshot saved as a JPEG."""
    from _runner import plain_analysis
    from PIL import Image

    from busdx.inference.decode import decode
    from busdx.inference.pipeline import analyze
    from busdx.inference.scan_area import find_scan_area

    scan = decode(str(record.image_path)).image
    pixels, boxes = screen([scan], np.random.default_rng([SEED, i]))
    row = {"image": record.image_path.name, "label": record.label}
    for name, source, trim in (("plain", scan, True), ("uncut", pixels, False),
                               ("screenshot", pixels, True),
                               ("dicom", screen_dicom(pixels, boxes), True)):
        a = (plain_analysis(record, scan, models, baseline) if name == "plain"
             else analyze(source, models, render_overlays=False, trim_margins=trim))
        row[name] = a.probability
        row[f"{name}_malignant"] = a.malignant_at_threshold
        if name not in ("plain", "uncut"):
            fit = _fit(a.scan_area, boxes[0], pixels.shape, scan)
            row.update({f"{name}_{k}": v for k, v in fit.items()})
    # the same screenshot saved as a JPEG, as many exports are: where the cut falls (ringing
    # around the annotations makes them harder to tell from tissue)
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=JPEG_QUALITY)
    area = find_scan_area(decode(jpeg.getvalue()).image)
    fit = _fit(None if area.is_whole(pixels.shape) else area, boxes[0], pixels.shape, scan)
    row.update({f"jpeg_{k}": v for k, v in fit.items()})
    return row


def lesion_row(i: int, lesion: str, a, b, models, baseline=None) -> dict:
    """The ``i``-th validation lesion's halves on one dual-view screen (seeded by ``i``): read
    from the DICOM's two regions, against its two files; and whether the screenshot, whose
    panes touch, is refused."""
    from _runner import plain_analysis

    from busdx.inference.decode import decode
    from busdx.inference.errors import InputError
    from busdx.inference.lesion import read_lesion
    from busdx.inference.pipeline import analyze

    threshold = models.settings.lesion_threshold
    scans = [decode(str(r.image_path)).image for r in (a, b)]
    pixels, boxes = screen(scans, np.random.default_rng([SEED, 1, i]))
    dicom = screen_dicom(pixels, boxes)
    panes = [analyze(dicom, models, render_overlays=False, pane=p) for p in ("left", "right")]
    split = read_lesion(panes, threshold)
    apart = read_lesion([plain_analysis(r, s, models, baseline)
                         for r, s in zip((a, b), scans, strict=True)], threshold)
    try:
        analyze(pixels, models, render_overlays=False, pane="left")
        refused = False
    except InputError:
        refused = True
    return {
        "lesion": lesion, "label": a.label,
        "dicom": split.probability, "dicom_malignant": split.malignant_at_threshold,
        "halves": apart.probability, "halves_malignant": apart.malignant_at_threshold,
        "panes_exact": all(p.scan_area is None
                           and _fit(p.pane[1], box, pixels.shape, scan)["exact"]
                           for p, box, scan in zip(panes, boxes, scans, strict=True)),
        "screenshot_refused": refused,
    }


def collect(data: str, models_dir: str | None, threads: int, baseline=None) -> dict:
    from _runner import lesion_pairs, validation_records
    from tqdm import tqdm

    from busdx.inference.models import Models

    models = Models.load(models_dir, threads=threads)
    val = validation_records(data)
    images = [image_row(i, r, models, baseline)
              for i, r in enumerate(tqdm(val, desc="validation images"))]
    lesions = [lesion_row(i, lesion, a, b, models, baseline)
               for i, (lesion, a, b) in enumerate(tqdm(lesion_pairs(val),
                                                       desc="validation lesions"))]
    return {"threshold": models.settings.threshold,
            "lesion_threshold": models.settings.lesion_threshold,
            "model_version": models.version, "images": images, "lesions": lesions}


def _reading(y: np.ndarray, p: np.ndarray, call: np.ndarray, reference: np.ndarray) -> dict:
    from busdx.evaluation.classification import roc_auc

    return {"auc": roc_auc(y, p), "sensitivity": float(call[y == 1].mean()),
            "specificity": float((~call[y == 0]).mean()),
            "calls_flipped": int((call != reference).sum())}


def summarise(collected: dict) -> dict:
    images, lesions = collected["images"], collected["lesions"]
    y = np.array([r["label"] for r in images])
    plain = np.array([r["plain_malignant"] for r in images])
    readings = {}
    for name in ("plain", "uncut", "screenshot", "dicom"):
        readings[name] = _reading(y, np.array([r[name] for r in images]),
                                  np.array([r[f"{name}_malignant"] for r in images]), plain)
        if name not in ("plain", "uncut"):
            for key, field in (("cut_exactly", "exact"), ("cut_near", "near"),
                               ("scan_cut_into", "cut_into")):
                readings[name][key] = int(sum(r[f"{name}_{field}"] for r in images))
    jpeg = {key: int(sum(r[f"jpeg_{field}"] for r in images))
            for key, field in (("cut_exactly", "exact"), ("cut_near", "near"),
                               ("scan_cut_into", "cut_into"))}
    ly = np.array([r["label"] for r in lesions])
    halves = np.array([r["halves_malignant"] for r in lesions])
    dual = {name: _reading(ly, np.array([r[name] for r in lesions]),
                           np.array([r[f"{name}_malignant"] for r in lesions]), halves)
            for name in ("dicom", "halves")}
    return {
        "question": "a scanner's screen (annotations around the scan; dual views with touching "
                    "panes): what does it cost as a screenshot, and do a DICOM file's declared "
                    "regions give the scan back?",
        "split": "validation (fold 5 not read)",
        "images": len(images), "malignant": int(y.sum()),
        "threshold": collected["threshold"],
        "near_px": NEAR,
        "screen": {"margins": dict(zip(("top", "bottom", "left", "right"), MARGINS,
                                       strict=True)),
                   "min_margins_px": dict(zip(("top", "bottom", "left", "right"), MIN_MARGINS,
                                              strict=True)),
                   "annotations": "title line, settings column, numbered depth scale, body "
                                  "marker"},
        "model_version": collected["model_version"],
        "readings": readings,
        "jpeg_screenshot_cut": {"quality": JPEG_QUALITY, **jpeg},
        "dual_view": {
            "lesions": len(lesions), "malignant": int(ly.sum()),
            "lesion_threshold": collected["lesion_threshold"],
            "panes_exact": int(sum(r["panes_exact"] for r in lesions)),
            "screenshots_refused": int(sum(r["screenshot_refused"] for r in lesions)),
            "readings": dual,
        },
    }


def describe(result: dict, args, out: Path) -> None:
    log.info("%d validation images on a scanner's screen", result["images"])
    for name, c in result["readings"].items():
        log.info("%-10s AUC %.3f  sensitivity %.3f  specificity %.3f  flipped %3d  cut exactly "
                 "%s, within %d px %s, into the scan %s", name, c["auc"], c["sensitivity"],
                 c["specificity"], c["calls_flipped"], c.get("cut_exactly", "-"),
                 result["near_px"], c.get("cut_near", "-"), c.get("scan_cut_into", "-"))
    j = result["jpeg_screenshot_cut"]
    log.info("as JPEG %d: cut exactly %d, within %d px %d, into the scan %d", j["quality"],
             j["cut_exactly"], result["near_px"], j["cut_near"], j["scan_cut_into"])
    d = result["dual_view"]
    log.info("%d lesions on dual-view screens with touching panes: %d split exactly from the "
             "regions, %d screenshots refused", d["lesions"], d["panes_exact"],
             d["screenshots_refused"])
    for name, c in d["readings"].items():
        log.info("%-10s AUC %.3f  sensitivity %.3f  specificity %.3f  calls unlike the halves' %d",
                 name, c["auc"], c["sensitivity"], c["specificity"], c["calls_flipped"])


def main(argv: list[str] | None = None) -> int:
    from _runner import run_study

    return run_study(__doc__, "scanner_screens", lambda a: collect(a.data, a.models, a.threads),
                     summarise, describe, argv)


if __name__ == "__main__":
    raise SystemExit(main())
