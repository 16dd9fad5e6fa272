"""Decoding large inputs: one frame of a DICOM cine loop, and a large raster, in time and memory.

A cine loop is the whole clip the scanner recorded: a hundred frames or more, uncompressed
often well over the server's default upload limit (``busdx serve --max-upload-mb`` raises it).
The analysis reads one frame, and decoding must not copy the whole loop once more: with several
analyses in flight the server would hold several loops twice. The target: the last frame of a
loop four times longer costs at most ``MEMORY_TARGET`` of the extra file size in peak memory.
The inputs are made here (seeded speckle with a dark lesion), each decoded by
``busdx.inference.decode.decode_bytes`` as the API does; peak memory is what Python allocates
during the decode (tracemalloc: numpy, pydicom and Pillow buffers), beside the file held in
memory already.

    python benchmarks/decode.py [--frames 100] [--reps 20]
"""

from __future__ import annotations

import argparse
import io
import logging
import time
import tracemalloc
from typing import Any

import numpy as np
from bench_common import RESULTS_DIR, machine, percentiles, setup_logging, versions, write_result

log = logging.getLogger("benchmarks.decode")

SEED = 0
# how much of a longer loop's extra size may show in the peak memory of decoding one frame:
# near 0 when frames are read from the file, 1 when the loop is copied
MEMORY_TARGET = 0.1


def scan(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    image = 90 + 60 * rng.random((height, width))
    image[((yy - height * 0.45) / (height * 0.15)) ** 2
          + ((xx - width * 0.5) / (width * 0.18)) ** 2 <= 1] *= 0.3
    return image.astype(np.uint8)


def loop_dicom(frames: int, height: int, width: int, colour: bool) -> bytes:
    """An uncompressed Ultrasound Multi-frame Image Storage file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(SEED)
    first = scan(height, width, rng)
    # the probe drifts: each frame the first, shifted a little
    pixels = np.stack([np.roll(first, (i % 7, i % 11), axis=(0, 1)) for i in range(frames)])
    if colour:
        pixels = np.repeat(pixels[..., None], 3, axis=3)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = height, width, frames
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def png(height: int, width: int) -> bytes:
    from PIL import Image

    rgb = np.repeat(scan(height, width, np.random.default_rng(SEED))[..., None], 3, axis=2)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def measure(data: bytes, frame: int | None, reps: int) -> dict[str, Any]:
    from busdx.inference.decode import decode_bytes

    decode_bytes(data, frame=frame)  # warm-up: imports and plugin discovery
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        decode_bytes(data, frame=frame)
        times.append((time.perf_counter() - start) * 1000.0)
    tracemalloc.start()
    decoded = decode_bytes(data, frame=frame)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"frame": decoded.frame, "frames": decoded.frames, "ms": percentiles(times),
            "peak_mb": round(peak / 2**20, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    short = max(2, args.frames // 4)
    inputs = {
        f"DICOM cine loop, {short} frames of 800x600 RGB, uncompressed":
            (loop_dicom(short, 600, 800, colour=True), (-1,)),
        f"DICOM cine loop, {args.frames} frames of 800x600 RGB, uncompressed":
            (loop_dicom(args.frames, 600, 800, colour=True), (1, args.frames // 2, -1)),
        f"DICOM cine loop, {args.frames} frames of 800x600 grey, uncompressed":
            (loop_dicom(args.frames, 600, 800, colour=False), (1, -1)),
        "PNG, 1600x1200 RGB": (png(1200, 1600), (None,)),
    }
    cases = []
    for name, (data, frames) in inputs.items():
        for frame in frames:
            m = measure(data, frame, args.reps)
            m.update(input=name, file_mb=round(len(data) / 2**20, 2))
            log.info("%s, frame %d: p50 %.1f ms, peak %.1f MB for a %.1f MB file", name,
                     m["frame"], m["ms"]["p50"], m["peak_mb"], m["file_mb"])
            cases.append(m)
    # the last frame of the short and of the long RGB loop: what the longer loop adds to the peak
    a, b = cases[0], cases[3]
    growth = (b["peak_mb"] - a["peak_mb"]) / (b["file_mb"] - a["file_mb"])
    return {"benchmark": "decode", "machine": machine(), "versions": versions(),
            "reps": args.reps, "cases": cases,
            "targets": {"memory_share": MEMORY_TARGET,
                        "loop_growth_in_peak": round(growth, 4),
                        "memory_met": growth <= MEMORY_TARGET}}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON result")
    parser.add_argument("--models", default=None, help="unused (decoding needs no models)")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    write_result(args.out, "decode", run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
