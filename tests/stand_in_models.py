"""Tiny ONNX models with the real models' interface (busdx.models.contract), for tests that must
not depend on trained weights, and helpers to find the real bundled models.

Segmenter: logits = 4 (1 - r^2 / R^2) + 8 (0.3 - local mean intensity), r the distance to the
centre of the 224 square: a dark, central region becomes one blob; a bright image gives nothing.
Classifier: cam = 4 (7x7 average of the crop - 0.4); logit = mean(cam) + 0.1, so darker crops
score lower and the CAM obeys the contract (mean plus bias is the logit).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from busdx.models.contract import CLASSIFIER_FILE, SEGMENTER_FILE

REPO = Path(__file__).resolve().parents[1]
REAL_MODELS = REPO / "models"  # the bundled models (real_models_dir() also honours $BUSDX_MODELS)
SIZE = 224
OPSET = 17

def load_script(path: Path):
    """A script outside the package (studies/, tools/, benchmarks/) imported as a module named
    FOLDER_STEM. It is registered in sys.modules (dataclasses look their module up there), and
    its own folder is importable while it loads (the benchmarks import bench_common)."""
    name = f"{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


STAND_IN_CARD = {
    "version": "stand-in",
    "segmenter": {"input_size": SIZE},
    "classifier": {
        "temperature": 1.5,
        "threshold": 0.4,
        "input": "crop",
        "crop": {"size": SIZE, "context": 0.3},
    },
}


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _image_input():
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])


def segmenter_graph():
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    radius = 60.0
    prior = 4.0 * (1.0 - ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / radius**2) + 2.4
    nodes = [
        helper.make_node(
            "AveragePool", ["image"], ["blur"], kernel_shape=[15, 15], pads=[7, 7, 7, 7],
            count_include_pad=0,
        ),
        helper.make_node("Mul", ["blur", "minus8"], ["dark"]),
        helper.make_node("Add", ["dark", "prior"], ["mask_logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(-8.0, np.float32), "minus8"),
        numpy_helper.from_array(prior[None, None].astype(np.float32), "prior"),
    ]
    out = helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    return helper.make_graph(nodes, "stand_in_segmenter", [_image_input()], [out], inits)


def classifier_graph():
    stride = SIZE // 7
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[stride, stride],
                         strides=[stride, stride]),
        helper.make_node("Sub", ["pooled", "centre"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["cam"]),
        helper.make_node("ReduceMean", ["cam"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Add", ["mean", "bias"], ["logit"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.4, np.float32), "centre"),
        numpy_helper.from_array(np.array(4.0, np.float32), "gain"),
        numpy_helper.from_array(np.array(0.1, np.float32), "bias"),
    ]
    outs = [
        helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 1]),
        helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 1, 7, 7]),
    ]
    return helper.make_graph(nodes, "stand_in_classifier", [_image_input()], outs, inits)


def build_stand_in_models(directory: Path, card: dict | None = None) -> Path:
    """Write segmenter.onnx, classifier.onnx and their release.json (from ``card``, a card
    view) into ``directory``."""
    from busdx.evaluation.model_card import write_card

    directory.mkdir(parents=True, exist_ok=True)
    _save(segmenter_graph(), directory / SEGMENTER_FILE)
    _save(classifier_graph(), directory / CLASSIFIER_FILE)
    write_card(directory, card or STAND_IN_CARD)
    return directory


def real_models_dir() -> Path | None:
    """The bundled models ($BUSDX_MODELS, else models/) when both models and a usable card are
    there, else None."""
    from busdx.errors import BusdxError
    from busdx.inference.models import default_models_dir
    from busdx.release import load_release

    directory = default_models_dir()
    try:
        release = load_release(directory)
    except BusdxError:
        return None
    if not release.complete or not all((directory / g.file).is_file() for g in release.graphs):
        return None
    return directory


REAL_MODELS_MISSING = (
    "the bundled models are not in models/ yet (segmenter.onnx, classifier.onnx and their "
    "release.json): train and export them first"
)


# --- stand-in inputs: image files of every supported kind, built in memory --------------------


def synthetic_image(height: int = 200, width: int = 260, seed: int = 0) -> np.ndarray:
    """uint8 gray image: speckle with a dark oval 'lesion' a little off centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = 120 + 40 * rng.random((height, width))
    lesion = ((yy - height * 0.45) / (height * 0.18)) ** 2 + ((xx - width * 0.5) / (width * 0.2)) ** 2
    base[lesion <= 1] = 30 + 20 * rng.random(int((lesion <= 1).sum()))
    return base.astype(np.uint8)


def encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    """An array as file bytes in a Pillow format (PNG, JPEG, BMP, TIFF)."""
    import io

    from PIL import Image

    img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dicom_bytes(
    frames: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    regions: list[dict] | None = None,
    transfer_syntax: str | None = None,
    pixel_data: bytes | None = None,
    with_pixels: bool = True,
) -> bytes:
    """A DICOM Part 10 file (ultrasound image storage) holding ``frames``.

    ``frames``: HxW or HxWx3 (one frame), or FxHxW / FxHxWx3 (multi-frame when F > 1 and the
    array is 3-D gray or 4-D colour). ``pixel_data`` replaces the encoded pixels (for compressed
    or broken files); ``regions`` become the SequenceOfUltrasoundRegions.
    """
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    multi = frames.ndim == (4 if colour else 3)
    count = frames.shape[0] if multi else 1
    rows, cols = frames.shape[1:3] if multi else frames.shape[:2]
    syntax = transfer_syntax or ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    allocated = frames.dtype.itemsize * 8
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if colour:
        ds.PlanarConfiguration = 0
    if multi:
        ds.NumberOfFrames = count
    if regions:
        items = []
        for region in regions:
            item = Dataset()
            for key, value in region.items():
                setattr(item, key, value)
            items.append(item)
        ds.SequenceOfUltrasoundRegions = Sequence(items)
    if with_pixels:
        ds.PixelData = pixel_data if pixel_data is not None else frames.tobytes()
        if pixel_data is not None and syntax != ExplicitVRLittleEndian:
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def calibration_region(mm_per_pixel: float, width: int, height: int, left: int = 0,
                       top: int = 0) -> dict:
    """An ultrasound region calibrated in cm (units code 3), as scanners write it: a 2-D tissue
    scan of ``width`` x ``height`` pixels at (``left``, ``top``)."""
    return {
        "RegionSpatialFormat": 1,
        "RegionDataType": 1,
        "RegionFlags": 0,
        "RegionLocationMinX0": left,
        "RegionLocationMinY0": top,
        "RegionLocationMaxX1": left + width - 1,
        "RegionLocationMaxY1": top + height - 1,
        "PhysicalUnitsXDirection": 3,
        "PhysicalUnitsYDirection": 3,
        "PhysicalDeltaX": mm_per_pixel / 10.0,
        "PhysicalDeltaY": mm_per_pixel / 10.0,
    }


def jpeg_ls_dicom(height: int = 64, width: int = 64) -> bytes:
    """A DICOM claiming JPEG-LS compression (no decoder in the serving set) with junk data."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    fake = np.zeros((height, width), np.uint8)
    return dicom_bytes(
        fake, transfer_syntax=JPEGLSLossless, pixel_data=encapsulate([b"\xff\xd8" + b"\0" * 100])
    )


def as_if_trained(model):
    """``model`` with random batch-norm statistics and affine terms, as after training, so that
    folding them (export, --recover, soups) is not the identity."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model
