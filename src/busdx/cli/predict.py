"""``busdx predict INPUT [INPUT ...] --csv OUT.csv [--masks-dir DIR] [--overlays-dir DIR]
[--lesion-pattern REGEX] [--dual-view] [--lesions-csv LESIONS.csv] [--frame N]``.

One CSV row per image file; with ``--lesion-pattern`` and ``--lesions-csv``, also one row per
lesion, read from all its views (busdx.inference.lesion). With ``--dual-view`` each file is a
capture of a lesion's two planes side by side: one row per pane, and its panes are the views of
one lesion. A cine loop (a multi-frame DICOM) or a multi-page TIFF is read at one frame, the
first unless ``--frame`` names another; its ``frames`` column says how many it holds. A file
that cannot be analysed gets a row with ``error`` filled and the batch goes on (exit code 0);
only usage errors (nothing to analyse, an unwritable CSV, missing models) stop the command
with exit code 2. Only regular files are read (a FIFO or a device named on the command line gets
an error row, never a hang), each up to busdx.inference.decode.MAX_FILE_BYTES; in a folder,
what is neither an image nor a folder (a dangling link, a FIFO, an unreadable subfolder, a link
to a folder, which is not followed) is named in a warning. Lengths are in ``units`` (mm when
the file carries a calibration, else px), areas in ``units`` squared. Inputs may also be listed
in a CSV (``--list``) or given as URLs that fsspec opens. With ``--ray`` a pool of Ray workers
computes the same rows, written in the same order as they arrive.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import stat
import sys
from pathlib import Path

from busdx.errors import BusdxError

log = logging.getLogger(__name__)

def register(subparsers, groups) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="analyse images (files or folders) and write one CSV row per image",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files (PNG, JPEG, BMP, TIFF, DICOM), folders (recursed) or, "
                             "with fsspec installed, URLs (s3://..., https://...)")
    parser.add_argument("--list", type=Path, metavar="FILE.csv",
                        help="also analyse the paths or URLs of this CSV's 'path' column (else "
                             "its first column)")
    parser.add_argument("--csv", required=True, type=Path, metavar="OUT.csv",
                        help="results, one row per image file")
    parser.add_argument("--masks-dir", type=Path, metavar="DIR",
                        help="write <stem>.png masks (input size, values 0 and 255)")
    parser.add_argument("--overlays-dir", type=Path, metavar="DIR",
                        help="write <stem>_overlay.png (outline) and <stem>_heatmap.png")
    parser.add_argument("--dicom-out", type=Path, metavar="DIR",
                        help="for DICOM inputs, write <stem>_sr.dcm (a TID 1500 measurement "
                             "report) and, when a lesion is found, <stem>_seg.dcm (its "
                             "segmentation), both referencing the source image")
    parser.add_argument("--lesion-pattern", metavar="REGEX",
                        help="views of one lesion: this regular expression is searched in each "
                             "file's path (with / separators) and its first group names the "
                             "lesion, e.g. '(bus_[0-9]+)-[lr]' for BUS-BRA's dual-view halves "
                             "or '(.*)/[^/]+$' for one folder per lesion; a path it does not "
                             "match is a lesion of its own")
    parser.add_argument("--lesions-csv", type=Path, metavar="OUT.csv",
                        help="with --lesion-pattern or --dual-view: one row per lesion, read "
                             "from its views")
    parser.add_argument("--dual-view", action="store_true",
                        help="each file is a dual-view capture (a lesion's two planes side by "
                             "side, split at the black gap between them): its panes get a row "
                             "each (path#left, path#right) and are two views of one lesion, "
                             "one lesion per file unless --lesion-pattern groups files")
    parser.add_argument("--frame", type=_frame, metavar="N",
                        help="the frame to analyse in cine loops and multi-page TIFFs: a number "
                             "from 1, a negative number counted from the end, 'first' (the "
                             "default) or 'last'; a file without that frame gets an error row")
    parser.add_argument("--models", type=Path, metavar="DIR",
                        help="models folder (default: $BUSDX_MODELS, else the bundled models/)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="ONNX Runtime threads per analysis (default: the cores, up to 4; "
                             "with --ray, 1 per worker)")
    scale = parser.add_argument_group(
        "at scale", "analyse on a pool of Ray workers (pip install 'busdx[ray]'); the rows, "
        "masks and overlays are those of a plain run, in the same order")
    scale.add_argument("--ray", action="store_true",
                       help="start a Ray instance on this machine for the run")
    scale.add_argument("--ray-address", metavar="ADDRESS",
                       help="join a running Ray cluster instead (ray://HOST:10001, or 'auto')")
    scale.add_argument("--ray-workers", type=int, metavar="N",
                       help="workers, each holding the models once (default: one per CPU)")
    scale.add_argument("--ray-batch", type=int, default=8, metavar="N",
                       help="inputs per task sent to a worker (default 8)")
    parser.set_defaults(func=run)


def _frame(text: str) -> int | None:
    from busdx.inference.decode import parse_frame

    try:
        return parse_frame(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def collect(inputs: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to analyse, and what folders held that was skipped, with why. Files given by
    name are always tried (each gets a row); folders contribute the images they hold, walked
    without following links to folders (a link loop cannot trap the walk)."""
    from busdx.inference.decode import is_image_file

    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    not_images = 0

    def unreadable(err: OSError) -> None:
        skipped.append((Path(err.filename or "?"), f"folder not read: {err.strerror or err}"))

    for item in inputs:
        if not item.is_dir():  # a file, or anything else named: its row says what it is
            found.append(item)
            continue
        for root, dirs, files in os.walk(item, onerror=unreadable):
            dirs.sort()
            for name in list(dirs):
                if os.path.islink(os.path.join(root, name)):
                    dirs.remove(name)
                    skipped.append((Path(root, name), "a link to a folder, not followed (name "
                                                      "it on the command line to include it)"))
            for name in sorted(files):
                path = Path(root, name)
                try:
                    mode = os.stat(path).st_mode
                except OSError:
                    skipped.append((path, "a link to nothing (dangling, or a loop)"))
                    continue
                if not stat.S_ISREG(mode):
                    skipped.append((path, "not a regular file (a FIFO, a device or a socket)"))
                elif is_image_file(path):
                    found.append(path)
                else:
                    not_images += 1
    if not_images:
        log.info("%d file(s) in the folders are not images and were skipped", not_images)
    seen: set[str] = set()
    unique = []
    for path in found:
        key = os.path.realpath(path)  # never raises, link loops included
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, skipped


def _warn_skipped(skipped: list[tuple[Path, str]], shown: int = 10) -> None:
    if not skipped:
        return
    lines = [f"  {path}: {why}" for path, why in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"  ... and {len(skipped) - shown} more")
    log.warning("%d path(s) in the folders were skipped:\n%s", len(skipped), "\n".join(lines))


LESION_COLUMNS = (
    "lesion", "views", "paths", "probability", "label", "threshold", "risk_band", "risk_text",
    "views_without_lesion", "views_unusual", "views_disagree", "views_not_ultrasound",
    "failed_views", "model_version",
    "note", "error",
)


def lesion_rows(views: dict[str, list], failed: dict[str, list[str]], threshold,
                agreement=None) -> list[dict]:
    """One row per lesion: ``views`` holds (path, ViewScore) of the views analysed, ``failed``
    the paths that could not be; ``agreement``: the models' ``settings.lesion_agreement``."""
    from busdx.inference.batch import fmt
    from busdx.inference.lesion import read_lesion

    rows = []
    for key in sorted(set(views) | set(failed)):
        done = views.get(key, [])
        row = {"lesion": key, "views": len(done), "failed_views": len(failed.get(key, [])),
               "paths": ";".join(str(p) for p, _ in done)}
        if not done:
            row["error"] = "no view of this lesion could be analysed"
        else:
            reading = read_lesion([v for _, v in done], threshold, agreement)
            notes = [reading.note] if reading.note else []
            if row["failed_views"]:
                notes.append(f"{row['failed_views']} view(s) failed and were left out")
            row.update(probability=reading.probability, label=reading.label,
                       threshold=reading.threshold,
                       risk_band=reading.risk.name if reading.risk else None,
                       risk_text=reading.risk.text if reading.risk else None,
                       views_without_lesion=reading.views_without_lesion,
                       views_unusual=reading.views_unusual,
                       views_disagree=reading.views_disagree,
                       views_not_ultrasound=reading.views_not_ultrasound,
                       model_version=reading.model_version, note="; ".join(notes), error="")
        rows.append({key: fmt(row.get(key)) for key in LESION_COLUMNS})
    return rows


class _Namer:
    """Output file stems; a stem seen before gets -2, -3... rather than overwriting a file."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, path: Path) -> str:
        n = self.counts.get(path.stem, 0) + 1
        self.counts[path.stem] = n
        if n > 1:
            log.warning("two inputs are named %s: the second gets the suffix -%d", path.stem, n)
        return path.stem if n == 1 else f"{path.stem}-{n}"


def _make_dir(path: Path | None) -> None:
    if path is None:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BusdxError(f"cannot create {path}: {err.strerror or err}") from err


def sources_from(args: argparse.Namespace) -> list[str]:
    """The inputs to analyse, as strings: the files named (their rows say what went wrong with
    them) and those found in the folders named, here or in ``--list``; then the URLs."""
    from busdx.inference.batch import is_url

    named = [str(p) for p in args.inputs]
    if args.list is not None:
        named += _listed(args.list)
    local = [Path(p) for p in named if not is_url(p)]
    files, skipped = collect(local)
    _warn_skipped(skipped)
    missing = [str(p) for p in local if not p.exists()]
    if missing:
        log.warning("not found (error rows written): %s", ", ".join(missing))
    return [str(f) for f in files] + [p for p in named if is_url(p)]


def _listed(path: Path) -> list[str]:
    """The paths or URLs of a CSV's ``path`` column (else its first column), one per row."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise BusdxError(f"cannot read the list {path}: {err}") from err
    if not rows:
        raise BusdxError(f"the list {path} is empty")
    header = [h.strip().lower() for h in rows[0]]
    column = header.index("path") if "path" in header else 0
    body = rows[1:] if "path" in header else rows
    return [row[column].strip() for row in body if len(row) > column and row[column].strip()]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from busdx.inference import Models
    from busdx.inference.batch import COLUMNS, BatchOptions, analyse_input
    from busdx.inference.lesion import compile_pattern, lesion_key

    if args.lesion_pattern is not None and args.lesions_csv is None:
        raise BusdxError("--lesion-pattern needs --lesions-csv (where the lesions' rows go)")
    if args.lesions_csv is not None and args.lesion_pattern is None and not args.dual_view:
        raise BusdxError("--lesions-csv needs --lesion-pattern or --dual-view (which files are "
                         "views of one lesion)")
    if not args.inputs and args.list is None:
        raise BusdxError("nothing to analyse: name files or folders, or --list FILE.csv")
    for option, value in (("--threads", args.threads), ("--ray-workers", args.ray_workers),
                          ("--ray-batch", args.ray_batch)):
        if value is not None and value < 1:
            raise BusdxError(f"{option} must be at least 1")
    use_ray = args.ray or args.ray_address is not None
    pattern = compile_pattern(args.lesion_pattern)
    by_lesion = args.lesions_csv is not None
    sources = sources_from(args)
    if not sources:
        raise BusdxError("no image files found in the inputs")
    # loaded here even for Ray: a missing or broken release stops the command before the batch
    models = Models.load(args.models, threads=args.threads)
    if by_lesion and models.settings.lesion_threshold is None:
        raise BusdxError("these models' card offers no lesion reading: leave out "
                         "--lesions-csv and --lesion-pattern")
    _make_dir(args.masks_dir)
    _make_dir(args.overlays_dir)
    _make_dir(args.dicom_out)
    out = _open_csv(args.csv)
    # opened now, so that an unwritable path stops the command before the batch, not after it
    lesions_out = _open_csv(args.lesions_csv) if by_lesion else None
    options = BatchOptions(dual_view=args.dual_view, frame=args.frame,
                           masks=args.masks_dir is not None,
                           overlays=args.overlays_dir is not None,
                           dicom=args.dicom_out is not None)
    if use_ray:
        from busdx.inference.ray_batch import analyse_all

        results = analyse_all(sources, args.models, options, address=args.ray_address,
                              workers=args.ray_workers, batch_size=args.ray_batch,
                              threads=args.threads or 1)
    else:
        results = (analyse_input(source, models, options) for source in sources)
    name = _Namer()
    failed = unusual = withheld = dual_regions = loops = not_dicom = 0
    views: dict[str, list] = {}
    failed_views: dict[str, list[str]] = {}
    with out, tqdm(total=len(sources), desc="predict", unit="image", file=sys.stderr) as bar:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        for done in results:
            for result in done:
                failed += result.failed
                unusual += result.unusual
                withheld += result.withheld
                dual_regions += result.dual_regions
                loops += result.loop
                not_dicom += result.not_dicom
                if result.pngs or result.dicom:
                    stem = name(Path(result.stem_source))
                    for suffix, png in result.pngs.items():
                        folder = args.masks_dir if suffix == "" else args.overlays_dir
                        (folder / f"{stem}{suffix}.png").write_bytes(png)
                    for suffix, part10 in result.dicom.items():
                        (args.dicom_out / f"{stem}{suffix}.dcm").write_bytes(part10)
                if by_lesion:
                    key = lesion_key(result.source, pattern)
                    if result.failed:
                        failed_views.setdefault(key, []).append(result.view)
                    else:
                        views.setdefault(key, []).append((result.view, result.score))
                writer.writerow(result.row)
            out.flush()
            bar.update()
    total = len(sources) * (2 if args.dual_view else 1)
    log.info("%d %s analysed, %d failed; results in %s", total - failed,
             "panes" if args.dual_view else "images", failed, args.csv)
    if by_lesion:
        rows = lesion_rows(views, failed_views, models.settings.lesion_threshold,
                           models.settings.lesion_agreement)
        with lesions_out:
            writer = csv.DictWriter(lesions_out, fieldnames=LESION_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        several = sum(int(r["views"] or 0) > 1 for r in rows)
        log.info("%d lesions (%d read from several views); results in %s", len(rows), several,
                 args.lesions_csv)
        if several == 0 and len(sources) > 1 and not args.dual_view:
            log.warning("--lesion-pattern put every file in a lesion of its own: check that its "
                        "first group names what the views of one lesion share")
    if dual_regions:
        log.warning("%d DICOM file(s) declare two scans side by side, read here as one image: "
                    "if they are a lesion's two planes, --dual-view reads each scan apart and "
                    "--lesions-csv the lesion from both (their regions column says 2)",
                    dual_regions)
    if loops and args.frame is None:
        log.warning("%d file(s) hold several frames (cine loops or multi-page TIFFs), read here "
                    "at their first frame: --frame N or --frame last reads another (their "
                    "frames column says how many)", loops)
    if not_dicom:
        log.warning("%d input(s) are not DICOM files: they have no DICOM results in %s",
                    not_dicom, args.dicom_out)
    if withheld:
        log.warning("%d image(s) may not be breast ultrasound at all and got no call (label "
                    "'call withheld'): check what is in the folder", withheld)
    if unusual:
        log.warning("%d image(s) unlike the training images, where the validated threshold may "
                    "not hold: see the input_unusual column", unusual)
    return 0



def _open_csv(path: Path):
    try:
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", newline="", encoding="utf-8")
    except OSError as err:
        raise BusdxError(f"cannot write {path}: {err.strerror or err}") from err
