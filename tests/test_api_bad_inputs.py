"""Every bad upload gets a 4xx JSON answer with a clear ``detail``, never a 500."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from busdx.api.app import Limits, create_app
from stand_in_models import (
    dicom_bytes,
    encode,
    jpeg_ls_dicom,
    png_header_only,
    synthetic_image,
)


def _post(stand_in_client, data: bytes, name: str = "upload.png"):
    return stand_in_client.post("/api/analyze", files={"file": (name, data, "application/octet-stream")})


def _expect(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word in detail.lower(), detail


def test_zero_bytes(stand_in_client):
    _expect(_post(stand_in_client, b""), 400, "empty")


def test_not_an_image(stand_in_client):
    _expect(_post(stand_in_client, b"%PDF-1.7 definitely not an ultrasound image"), 415, "not a supported")


def test_unsupported_raster_format(stand_in_client):
    gif = io.BytesIO()
    Image.new("L", (32, 32)).save(gif, format="GIF")
    _expect(_post(stand_in_client, gif.getvalue(), "a.gif"), 415, "png, jpeg")


def test_truncated_png(stand_in_client):
    png = encode(synthetic_image(), "PNG")
    _expect(_post(stand_in_client, png[: len(png) // 2]), 422, "truncated")


def test_truncated_jpeg(stand_in_client):
    jpeg = encode(synthetic_image(), "JPEG")
    _expect(_post(stand_in_client, jpeg[:200]), 422)


def test_png_header_only(stand_in_client):
    _expect(_post(stand_in_client, encode(synthetic_image(), "PNG")[:40]), 422, "png", "truncated")


def test_over_the_size_limit(stand_in_client):
    # 25 MB of a valid PNG prefix plus padding: refused by size before any decoding.
    data = encode(synthetic_image(), "PNG") + b"\0" * (25 * 1024 * 1024)
    _expect(_post(stand_in_client, data), 413, "25 mb")


def test_size_limit_is_enforced_while_streaming(stand_in_dir):
    limits = Limits(max_upload_bytes=100_000)
    with TestClient(create_app(stand_in_dir, limits=limits)) as small:
        ok = encode(synthetic_image(), "PNG")
        assert len(ok) < 100_000 and _post(small, ok).status_code == 200
        # A chunked body has no Content-Length: the limit must hold while the body streams.
        body = io.BytesIO(b"\0" * 300_000)
        boundary = "busdxboundary"

        def chunks():
            yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '.encode()
            yield b'filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
            while block := body.read(16_384):
                yield block
            yield f"\r\n--{boundary}--\r\n".encode()

        response = small.post(
            "/api/analyze",
            content=chunks(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        _expect(response, 413)


@pytest.mark.parametrize("size", [(100_000, 100_000), (60_000, 1_000)])
def test_decompression_bomb_header(stand_in_client, size):
    # Over twice Pillow's own limit, and between its warning and error levels.
    _expect(_post(stand_in_client, png_header_only(*size)), 413, "pixels")


def test_large_but_compressible_png_over_the_pixel_limit(stand_in_dir):
    with TestClient(create_app(stand_in_dir, limits=Limits(max_pixels=1_000_000))) as small:
        data = encode(np.zeros((1_100, 1_000), np.uint8), "PNG")
        assert len(data) < 10_000  # tiny file, large image
        _expect(_post(small, data), 413, "pixels")


def test_dicom_with_compressed_syntax_and_no_decoder(stand_in_client):
    _expect(_post(stand_in_client, jpeg_ls_dicom(), "a.dcm"), 415, "jpeg-ls")


def test_dicom_without_pixel_data(stand_in_client):
    _expect(_post(stand_in_client, dicom_bytes(synthetic_image(), with_pixels=False), "a.dcm"), 415, "pixel")


def test_dicom_over_the_pixel_limit(stand_in_dir):
    with TestClient(create_app(stand_in_dir, limits=Limits(max_pixels=1_000))) as small:
        _expect(_post(small, dicom_bytes(synthetic_image()), "a.dcm"), 413, "pixels")


def test_truncated_dicom(stand_in_client):
    data = dicom_bytes(synthetic_image())
    response = _post(stand_in_client, data[: len(data) - 5000], "a.dcm")
    assert response.status_code in (415, 422) and response.json()["detail"]


def test_tiny_image(stand_in_client):
    _expect(_post(stand_in_client, encode(np.zeros((4, 4), np.uint8), "PNG")), 422, "too small")


def test_missing_file_field(stand_in_client):
    response = stand_in_client.post("/api/analyze", files={"image": ("a.png", b"abc")})
    _expect(response, 422, "'file'")


def test_not_multipart(stand_in_client):
    response = stand_in_client.post("/api/analyze", content=b"abc", headers={"content-type": "image/png"})
    _expect(response, 415, "multipart")


def test_malformed_multipart(stand_in_client):
    response = stand_in_client.post(
        "/api/analyze",
        content=b"--x\r\nthis is not a part header\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= response.status_code < 500 and response.json()["detail"]


def test_service_still_healthy_after_bad_inputs(stand_in_client):
    _post(stand_in_client, b"junk")
    assert stand_in_client.get("/api/health").status_code == 200
    assert _post(stand_in_client, encode(synthetic_image(), "PNG")).status_code == 200


def test_internal_failure_is_a_json_500_without_details(stand_in_dir, monkeypatch):
    import busdx.api.routers.analyze as route

    def broken(*args, **kwargs):
        raise RuntimeError("secret path /home/patient/x.png")

    monkeypatch.setattr(route, "run_analysis", broken)
    with TestClient(create_app(stand_in_dir), raise_server_exceptions=False) as c:
        response = _post(c, encode(synthetic_image(), "PNG"))
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error: the analysis failed"}


@pytest.mark.parametrize("value", ["0", "-5", "ten", "5000"])
def test_serve_refuses_an_upload_limit_that_is_not_one(value, capsys):
    from busdx.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--max-upload-mb", value])
    assert exit_.value.code == 2
    assert "whole number of MB" in capsys.readouterr().err


def test_serve_passes_its_upload_limit_to_the_app(stand_in_dir, monkeypatch):
    import uvicorn

    from busdx.cli.main import main

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.setdefault("app", app))
    assert main(["serve", "--models", str(stand_in_dir), "--max-upload-mb", "200"]) == 0
    assert served["app"].state.limits.max_upload_bytes == 200 * 2**20
