"""Files of many frames (a DICOM cine loop, a multi-page TIFF): one frame is analysed, the first
unless another is asked for, and every output says which and how many."""

from __future__ import annotations

import base64
import csv
import io
import logging

import numpy as np
import pytest
from PIL import Image

from busdx.cli.main import main
from busdx.inference.decode import decode, decode_bytes, parse_frame
from busdx.inference.errors import NoSuchFrame
from stand_in_models import dicom_bytes, encode, synthetic_image

GRAY = synthetic_image(150, 200)
# three frames that differ everywhere, so the frame decoded can be told from the pixels
LOOP = np.stack([GRAY, 255 - GRAY, GRAY // 2])


def _tiff_pages(pages: np.ndarray) -> bytes:
    images = [Image.fromarray(page) for page in pages]
    out = io.BytesIO()
    images[0].save(out, format="TIFF", save_all=True, append_images=images[1:])
    return out.getvalue()


@pytest.mark.parametrize("encoder", [dicom_bytes, _tiff_pages], ids=["dicom", "tiff"])
@pytest.mark.parametrize(("frame", "index"), [(None, 0), (1, 0), (2, 1), (3, 2), (-1, 2), (-3, 0)])
def test_the_frame_asked_for_is_decoded(encoder, frame, index):
    out = decode_bytes(encoder(LOOP), frame=frame)
    assert (out.frames, out.frame) == (3, index + 1)
    np.testing.assert_allclose(out.image, LOOP[index] / 255.0, atol=1e-6)


def test_a_colour_cine_loop_decodes_the_frame_asked_for():
    rgb = np.stack([GRAY, GRAY // 3, 255 - GRAY], axis=-1)
    out = decode_bytes(dicom_bytes(np.stack([rgb, 255 - rgb]), photometric="RGB"), frame=-1)
    assert (out.frames, out.frame) == (2, 2)
    first = decode_bytes(dicom_bytes(rgb, photometric="RGB")).image
    assert out.image.mean() == pytest.approx(1.0 - first.mean(), abs=0.01)


@pytest.mark.parametrize("encoder", [dicom_bytes, _tiff_pages], ids=["dicom", "tiff"])
@pytest.mark.parametrize("frame", [4, -4, 0])
def test_a_frame_the_file_lacks_is_refused_with_the_count(encoder, frame):
    with pytest.raises(NoSuchFrame, match="holds 3 frames"):
        decode_bytes(encoder(LOOP), frame=frame)


def test_single_frame_files_have_frame_one_only():
    for data in (dicom_bytes(GRAY), encode(GRAY, "PNG"), encode(GRAY, "JPEG")):
        out = decode_bytes(data, frame=1)
        assert (out.frames, out.frame) == (1, 1)
        assert decode_bytes(data, frame=-1).frame == 1
        with pytest.raises(NoSuchFrame, match="holds 1 frame "):
            decode_bytes(data, frame=2)
    with pytest.raises(NoSuchFrame):
        decode(GRAY, frame=2)


@pytest.mark.parametrize(("text", "value"), [
    (None, None), ("", None), ("first", None), (" Last ", -1), ("3", 3), ("-2", -2), (5, 5)])
def test_parse_frame(text, value):
    assert parse_frame(text) == value


@pytest.mark.parametrize("text", ["0", "two", "1.5", "-"])
def test_parse_frame_refuses_what_is_not_a_frame(text):
    with pytest.raises(ValueError, match="'first' or 'last'"):
        parse_frame(text)


def _image_png(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["png"]["image"]))))


@pytest.mark.parametrize(("query", "index"), [("", 0), ("?frame=2", 1), ("?frame=last", 2)])
def test_the_api_analyses_the_frame_asked_for(stand_in_client, query, index):
    response = stand_in_client.post(f"/api/analyze{query}", files={"file": ("loop.dcm", dicom_bytes(LOOP))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["image"]["frames"], body["image"]["frame"]) == (3, index + 1)
    shown = _image_png(body)
    shown = shown[..., 0] if shown.ndim == 3 else shown
    assert np.abs(shown.astype(int) - LOOP[index].astype(int)).mean() < 2


def test_the_api_reports_one_frame_for_a_plain_image(stand_in_client):
    body = stand_in_client.post("/api/analyze", files={"file": ("a.png", encode(GRAY, "PNG"))}).json()
    assert (body["image"]["frames"], body["image"]["frame"]) == (1, 1)


@pytest.mark.parametrize(("query", "words"), [("?frame=9", "holds 3 frames"),
                                              ("?frame=zero", "'first' or 'last'")])
def test_the_api_refuses_a_frame_it_cannot_give(stand_in_client, query, words):
    response = stand_in_client.post(f"/api/analyze{query}", files={"file": ("loop.dcm", dicom_bytes(LOOP))})
    assert response.status_code == 422
    assert words in response.json()["detail"]


def test_a_pane_of_a_cine_loop_frame(stand_in_client):
    capture = np.zeros((3, 150, 410), np.uint8)
    capture[:, :, :200] = LOOP
    capture[:, :, 210:] = LOOP
    body = stand_in_client.post("/api/analyze?pane=right&frame=-1",
                       files={"file": ("loop.dcm", dicom_bytes(capture))}).json()
    assert body["image"]["pane"]["left"] == 210 and body["image"]["frame"] == 3
    assert (body["image"]["width"], body["image"]["height"]) == (200, 150)


def _rows(path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def test_predict_reads_one_frame_says_which_and_warns(tmp_path, stand_in_dir, monkeypatch, caplog):
    monkeypatch.setenv("BUSDX_MODELS", str(stand_in_dir))
    loop, still = tmp_path / "loop.dcm", tmp_path / "still.png"
    loop.write_bytes(dicom_bytes(LOOP))
    still.write_bytes(encode(GRAY, "PNG"))
    out = tmp_path / "first.csv"
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(loop), str(still), "--csv", str(out)]) == 0
    rows = _rows(out)
    assert (rows[str(loop)]["frame"], rows[str(loop)]["frames"]) == ("1", "3")
    assert (rows[str(still)]["frame"], rows[str(still)]["frames"]) == ("1", "1")
    assert "1 file(s) hold several frames" in caplog.text and "--frame" in caplog.text
    # the first frame equals the still image, so its reading does too
    assert rows[str(loop)]["probability"] == rows[str(still)]["probability"]

    caplog.clear()
    last = tmp_path / "last.csv"
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(loop), str(still), "--csv", str(last), "--frame", "last"]) == 0
    rows = _rows(last)
    assert rows[str(loop)]["frame"] == "3" and rows[str(loop)]["error"] == ""
    assert rows[str(still)]["frame"] == "1"  # a single frame is its own last
    assert "hold several frames" not in caplog.text

    third = tmp_path / "third.csv"
    assert main(["predict", str(loop), str(still), "--csv", str(third), "--frame", "3"]) == 0
    rows = _rows(third)
    assert rows[str(loop)]["frame"] == "3"
    assert "holds 1 frame" in rows[str(still)]["error"] and rows[str(still)]["probability"] == ""


def test_predict_refuses_a_frame_that_is_not_one(tmp_path, stand_in_dir, monkeypatch, capsys):
    monkeypatch.setenv("BUSDX_MODELS", str(stand_in_dir))
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tmp_path), "--csv", str(tmp_path / "o.csv"), "--frame", "0"])
    assert exit_.value.code == 2
    assert "'first' or 'last'" in capsys.readouterr().err
