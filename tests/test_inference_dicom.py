"""DICOM input: photometric interpretations, bit depths, multi-frame, calibration, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.pixels import convert_color_space

from busdx.inference.decode import decode_bytes
from busdx.inference.dicom import is_dicom
from busdx.inference.errors import CorruptImage, TooLarge, UnsupportedFormat
from stand_in_models import (
    calibration_region,
    dicom_bytes,
    jpeg_ls_dicom,
    synthetic_image,
)

GRAY = synthetic_image(120, 160)


def _luma(rgb):
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / 255.0


def test_monochrome2_8_bit():
    out = decode_bytes(dicom_bytes(GRAY))
    assert out.format == "DICOM"
    assert out.image.shape == GRAY.shape
    np.testing.assert_allclose(out.image, GRAY / 255.0, atol=1e-6)
    assert out.pixel_spacing_mm is None


def test_monochrome2_12_bits_in_16_scaled_by_bits_stored():
    data = (GRAY.astype(np.uint16) * 16).astype(np.uint16)  # 0..4080 of 4095
    out = decode_bytes(dicom_bytes(data, bits_stored=12))
    np.testing.assert_allclose(out.image, data / 4095.0, atol=1e-6)


def test_monochrome1_is_inverted():
    out = decode_bytes(dicom_bytes(GRAY, photometric="MONOCHROME1"))
    np.testing.assert_allclose(out.image, 1.0 - GRAY / 255.0, atol=1e-6)


def _colour():
    rng = np.random.default_rng(1)
    rgb = np.repeat(GRAY[..., None], 3, axis=2).astype(np.int16)
    rgb[..., 0] += rng.integers(-10, 10, GRAY.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_rgb_becomes_luma():
    rgb = _colour()
    out = decode_bytes(dicom_bytes(rgb, photometric="RGB"))
    np.testing.assert_allclose(out.image, _luma(rgb.astype(float)), atol=1e-5)


def test_ybr_full_is_converted_to_rgb():
    rgb = _colour()
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = decode_bytes(dicom_bytes(ybr, photometric="YBR_FULL"))
    np.testing.assert_allclose(out.image, _luma(rgb.astype(float)), atol=2 / 255)


def test_ybr_full_422_is_upsampled_and_converted():
    rgb = _colour()
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    # Native 4:2:2 stores Y1 Y2 Cb Cr for each horizontal pair of pixels.
    packed = np.stack(
        [ybr[:, 0::2, 0], ybr[:, 1::2, 0], ybr[:, 0::2, 1], ybr[:, 0::2, 2]], axis=-1
    )
    data = dicom_bytes(ybr, photometric="YBR_FULL_422", pixel_data=packed.tobytes())
    out = decode_bytes(data)
    assert out.image.shape == GRAY.shape
    # Chroma is shared by pixel pairs, so allow the loss of 4:2:2; luma dominates gray.
    np.testing.assert_allclose(out.image, _luma(rgb.astype(float)), atol=6 / 255)


def test_multi_frame_uses_the_first_frame():
    frames = np.stack([GRAY, 255 - GRAY, np.zeros_like(GRAY)])
    out = decode_bytes(dicom_bytes(frames))
    np.testing.assert_allclose(out.image, GRAY / 255.0, atol=1e-6)


def test_multi_frame_rgb_uses_the_first_frame():
    rgb = _colour()
    frames = np.stack([rgb, 255 - rgb])
    out = decode_bytes(dicom_bytes(frames, photometric="RGB"))
    np.testing.assert_allclose(out.image, _luma(rgb.astype(float)), atol=1e-5)


def test_ultrasound_region_calibration_in_cm_gives_mm_per_pixel():
    region = calibration_region(0.08, GRAY.shape[1], GRAY.shape[0])
    out = decode_bytes(dicom_bytes(GRAY, regions=[region]))
    assert out.pixel_spacing_mm == pytest.approx((0.08, 0.08))


def test_region_in_other_units_is_ignored():
    region = calibration_region(0.08, GRAY.shape[1], GRAY.shape[0])
    region["PhysicalUnitsXDirection"] = region["PhysicalUnitsYDirection"] = 4  # seconds
    out = decode_bytes(dicom_bytes(GRAY, regions=[region]))
    assert out.pixel_spacing_mm is None


def test_compressed_without_decoder_is_refused_clearly():
    with pytest.raises(UnsupportedFormat, match="JPEG-LS"):
        decode_bytes(jpeg_ls_dicom())


def test_missing_pixel_data_is_refused():
    with pytest.raises(UnsupportedFormat, match="no pixel data"):
        decode_bytes(dicom_bytes(GRAY, with_pixels=False))


def test_palette_colour_is_refused():
    data = dicom_bytes(GRAY, photometric="PALETTE COLOR")
    with pytest.raises(UnsupportedFormat, match="PALETTE"):
        decode_bytes(data)


def test_truncated_dicom_is_refused():
    data = dicom_bytes(GRAY)
    with pytest.raises((UnsupportedFormat, CorruptImage)):
        decode_bytes(data[: len(data) // 2])


def test_pixel_limit_is_checked_from_the_header():
    with pytest.raises(TooLarge):
        decode_bytes(dicom_bytes(GRAY), max_pixels=GRAY.size - 1)


def test_magic():
    assert is_dicom(dicom_bytes(GRAY)[:132])
    assert not is_dicom(b"\x89PNG" + b"\0" * 200)


# ------------------------------------------------------------- declared scan regions


def _regions(*regions: dict):
    from busdx.inference.decode import decode_bytes

    return decode_bytes(dicom_bytes(np.zeros((200, 300), np.uint8), regions=list(regions))).regions


def test_declared_tissue_regions_are_read_left_to_right_and_clipped():
    right = calibration_region(0.2, 120, 150, left=160, top=20)
    left = calibration_region(0.1, 150, 150, left=5, top=20)
    spill = calibration_region(0.1, 400, 100, left=250, top=150)  # runs off the image
    regions = _regions(right, left, spill)
    assert [(r.area.left, r.area.top, r.area.width, r.area.height) for r in regions] == [
        (5, 20, 150, 150), (160, 20, 120, 150), (250, 150, 50, 50)]
    assert [r.pixel_spacing_mm for r in regions] == [pytest.approx((0.1, 0.1)),
                                                     pytest.approx((0.2, 0.2)),
                                                     pytest.approx((0.1, 0.1))]


def test_only_two_d_tissue_regions_count():
    scan = calibration_region(0.1, 200, 150, left=40, top=20)
    colour = dict(calibration_region(0.1, 80, 60, left=100, top=40), RegionDataType=2)
    spectral = dict(calibration_region(0.1, 200, 30, left=40, top=170), RegionSpatialFormat=3)
    tiny = calibration_region(0.1, 20, 20, left=0, top=0)
    inside = calibration_region(0.1, 50, 50, left=60, top=40)  # a zoom box over the scan
    regions = _regions(colour, spectral, tiny, scan, inside, scan)
    assert [(r.area.left, r.area.top, r.area.width) for r in regions] == [(40, 20, 200)]
    untyped = {k: v for k, v in scan.items() if k != "RegionDataType"}
    assert len(_regions(untyped)) == 1
    uncalibrated = dict(scan, PhysicalUnitsXDirection=0, PhysicalUnitsYDirection=0)
    (region,) = _regions(uncalibrated)
    assert region.pixel_spacing_mm is None


def test_a_region_without_its_bounds_is_no_region_and_no_error():
    broken = calibration_region(0.1, 200, 150)
    del broken["RegionLocationMaxX1"]
    out = decode_bytes(dicom_bytes(np.zeros((200, 300), np.uint8), regions=[broken]))
    assert out.regions == () and out.pixel_spacing_mm == pytest.approx((0.1, 0.1))
    assert decode_bytes(dicom_bytes(GRAY)).regions == ()


# ------------------------------------------------- compressed files as scanners write them


def _jpeg(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "YBR_FULL_422"])
def test_jpeg_baseline_decodes_with_the_serving_set(photometric):
    """Most scanners store ultrasound as JPEG Baseline, colour ones as YBR_FULL_422: Pillow,
    in the serving set, decodes it for pydicom."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    gray = GRAY
    array = gray if photometric == "MONOCHROME2" else np.stack([gray] * 3, axis=-1)
    out = decode_bytes(dicom_bytes(array, photometric=photometric,
                                   transfer_syntax=JPEGBaseline8Bit,
                                   pixel_data=encapsulate([_jpeg(array)])))
    assert out.image.shape == gray.shape
    assert np.abs(out.image - gray / 255).mean() < 4 / 255  # lossy, but the same picture


def test_rle_lossless_decodes_exactly():
    import io

    from pydicom import dcmread
    from pydicom.uid import RLELossless

    ds = dcmread(io.BytesIO(dicom_bytes(GRAY)))
    ds.compress(RLELossless)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    np.testing.assert_allclose(decode_bytes(buffer.getvalue()).image, GRAY / 255, atol=1e-6)


def test_jpeg_2000_lossless_decodes_exactly():
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    buffer = io.BytesIO()
    Image.fromarray(GRAY).save(buffer, format="JPEG2000", irreversible=False)
    out = decode_bytes(dicom_bytes(GRAY, transfer_syntax=JPEG2000Lossless,
                                   pixel_data=encapsulate([buffer.getvalue()])))
    np.testing.assert_allclose(out.image, GRAY / 255, atol=1e-6)


@pytest.mark.parametrize("name, what", [("CT_small.dcm", "a CT image"),
                                        ("MR_small.dcm", "an MR image")])
def test_a_dicom_of_another_modality_is_refused_saying_what_it_is(name, what):
    """Real CT and MR files (pydicom's test files, copied into the not-ultrasound fixtures) are
    refused with their modality named, not analysed as if they were scans."""
    from pathlib import Path

    from busdx.inference.errors import NotUltrasound

    path = Path(__file__).parent / "fixtures" / "not-ultrasound" / f"pydicom_{name}"
    with pytest.raises(NotUltrasound, match=f"is {what} .Modality"):
        decode_bytes(path.read_bytes())
