"""What a network and a hospital's files send: every input gets a documented 4xx (or a CSV error
row), never a 5xx or an aborted batch; each request's cost is bounded (docs/api.md, "Limits");
nothing is written under the home directory and no build path is served; the Host header is
checked."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import config as dicom_config
from pydicom.dataelem import DataElement

from busdx.api.app import Limits, create_app
from busdx.cli.main import main
from busdx.evaluation.model_card import load_card, write_card
from busdx.inference.decode import MAX_DECODED_BYTES, MAX_FRAMES, decode_bytes, read_file
from busdx.inference.errors import BlankImage, InputError, TooLarge
from stand_in_models import (
    calibration_region,
    dicom_bytes,
    encode,
    png_header_only,
    synthetic_image,
)

REPO = Path(__file__).resolve().parents[1]
PIXEL_SPACING = 0x00280030


@pytest.fixture(scope="module")
def client(stand_in_dir):
    with TestClient(create_app(stand_in_dir), raise_server_exceptions=False) as client:
        yield client


def _post(client, data: bytes, name: str = "x.dcm", query: str = ""):
    return client.post(f"/api/analyze{query}", files={"file": (name, data)})


def _with_raw(base: bytes, tag: int, vr: str, raw: str) -> bytes:
    """``base`` (a DICOM file) with one attribute written as the raw text given, valid or not,
    as a careless exporter might write it."""
    dicom_config.settings.writing_validation_mode = dicom_config.IGNORE
    try:
        ds = pydicom.dcmread(io.BytesIO(base))
        ds[tag] = DataElement(tag, vr, raw)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    finally:
        dicom_config.settings.writing_validation_mode = dicom_config.WARN


# ------------------------------------------------------------------- no 5xx on any input


def test_an_overlong_multipart_boundary_is_a_4xx(client):
    boundary = "b" * 300
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\""
            f"\r\n\r\nxx\r\n--{boundary}--\r\n").encode()
    r = client.post("/api/analyze", content=body,
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 422 and "boundary" in r.json()["detail"]


@pytest.mark.parametrize("raw", ["1e309\\1e309", "nan\\nan", "inf\\0.1", "0\\0", "0.1",
                                 "1e-9\\1e-9", "1e30\\1e30", "0.1\\0.1\\0.1"])
def test_an_implausible_pixel_spacing_is_ignored_and_said(client, raw):
    data = _with_raw(dicom_bytes(synthetic_image(120, 160)), PIXEL_SPACING, "DS", raw)
    r = _post(client, data)
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    assert image["pixel_spacing_mm"] is None
    assert "calibration was ignored" in image["pixel_spacing_note"]
    if r.json()["measurements"]:
        assert r.json()["measurements"]["units"] == "px"


@pytest.mark.parametrize("delta", [1e30, 1e-12, float("inf"), float("nan"), 0.0])
def test_an_implausible_region_calibration_is_ignored_and_said(client, delta):
    image = synthetic_image(120, 160)
    region = calibration_region(0.1, 160, 120) | {"PhysicalDeltaX": delta, "PhysicalDeltaY": delta}
    r = _post(client, dicom_bytes(image, regions=[region]))
    assert r.status_code == 200, r.text
    assert r.json()["image"]["pixel_spacing_mm"] is None
    assert "ultrasound region" in r.json()["image"]["pixel_spacing_note"]


def test_a_plausible_calibration_is_kept_without_a_note(client):
    image = synthetic_image(120, 160)
    r = _post(client, dicom_bytes(image, regions=[calibration_region(0.1, 160, 120)]))
    assert r.json()["image"]["pixel_spacing_mm"] == pytest.approx([0.1, 0.1])
    assert r.json()["image"]["pixel_spacing_note"] is None


@pytest.mark.parametrize("shape", [(8, 300), (300, 10), (15, 15)])
def test_a_strip_too_thin_for_a_lesion_is_refused_not_a_500(client, shape):
    r = _post(client, encode(synthetic_image(*shape), "PNG"), "thin.png")
    assert r.status_code == 422 and "too small to hold a lesion" in r.json()["detail"]


@pytest.mark.parametrize("level", [0, 255, 128])
def test_blank_images_get_a_refusal_not_a_call(client, level):
    blank = np.full((240, 320), level, np.uint8)
    r = _post(client, encode(blank, "PNG"), "blank.png")
    assert r.status_code == 422 and "blank" in r.json()["detail"]
    # a few grey levels of noise or a caption's letters do not make a scan
    noisy = blank.astype(np.int16) + np.random.default_rng(0).integers(-2, 3, blank.shape)
    noisy[10:14, 10:40] = 255 - level
    r = _post(client, encode(np.clip(noisy, 0, 255).astype(np.uint8), "PNG"), "near.png")
    assert r.status_code == 422 and "blank" in r.json()["detail"]


def test_the_fixtures_are_not_blank(fixtures_root):
    from busdx.inference.decode import decode
    from busdx.inference.quality import is_blank

    for path in sorted((fixtures_root / "Images").glob("*.png")):
        assert not is_blank(decode(path).image), path.name


@pytest.mark.parametrize("body", ['{"views": [{"logit": NaN, "lesion_found": true, '
                                  '"model_version": "v"}]}',
                                  '{"views": [{"logit": Infinity, "lesion_found": true, '
                                  '"model_version": "v"}]}',
                                  '{"views": [{"logit": 1e309, "lesion_found": true, '
                                  '"model_version": "v"}]}',
                                  '{"views": [{"logit": 1e308, "lesion_found": true, '
                                  '"model_version": "v"}, {"logit": 1e308, "lesion_found": true, '
                                  '"model_version": "v"}]}',
                                  '{"views": [{"logit": 1.0, "lesion_found": true, '
                                  f'"model_version": "{"v" * 5000}"}}]}}'])
def test_a_bad_lesion_body_is_a_short_422(client, body):
    r = client.post("/api/lesion", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    detail = r.json()["detail"]  # valid JSON: no NaN quoted back
    assert len(r.content) < 2000 and "vvvvvvvvvv" not in r.text
    assert all(set(e) == {"loc", "msg", "type"} for e in detail)


def test_a_large_json_body_is_refused_before_it_is_parsed(client):
    big = json.dumps({"views": [{"logit": 0.0, "lesion_found": True,
                                 "model_version": "x" * (2 * 2**20)}]})
    r = client.post("/api/lesion", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 200
    # the same without a declared length (chunked): counted as it arrives
    r = client.post("/api/lesion", content=iter([big.encode()[i:i + 65536]
                                                 for i in range(0, len(big), 65536)]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413


# -------------------------------------------------------------- bounded cost per request


def test_a_tiff_of_many_pages_is_refused_after_looking_at_few():
    pages = [Image.fromarray(np.full((8, 8), i % 250, np.uint8)) for i in range(MAX_FRAMES + 500)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    start = time.perf_counter()
    with pytest.raises(TooLarge, match="more than"):
        decode_bytes(buf.getvalue())
    assert time.perf_counter() - start < 5  # was a minute for 80,000 pages
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:MAX_FRAMES])
    assert decode_bytes(buf.getvalue(), frame=-1).frame == MAX_FRAMES


def _png_header(width: int, height: int, colour_type: int) -> bytes:
    import struct
    import zlib

    header = bytearray(png_header_only(width, height))
    header[25] = colour_type  # IHDR: 0 grey, 2 RGB, 6 RGBA
    header[29:33] = struct.pack(">I", zlib.crc32(bytes(header[12:29])))
    return bytes(header)


def test_decoded_bytes_count_channels_not_only_pixels():
    # 6000 x 6000 is under the pixel limit; as RGBA it would take 144 MB before any copy
    assert 6000 * 6000 * 4 > MAX_DECODED_BYTES >= 6000 * 6000
    with pytest.raises(TooLarge, match="MB decoded"):
        decode_bytes(_png_header(6000, 6000, 6))
    with pytest.raises(TooLarge, match="MB decoded"):  # a DICOM frame: samples x bits
        shape_only = np.broadcast_to(np.zeros(1, np.uint8), (6000, 6000, 3))  # no memory
        decode_bytes(dicom_bytes(shape_only, photometric="RGB", pixel_data=b"\0" * 16))
    # as grey the same size passes the check (and fails later: this header has no pixels)
    with pytest.raises(InputError) as grey:
        decode_bytes(_png_header(6000, 6000, 0))
    assert "MB decoded" not in str(grey.value)


def test_an_upload_that_finds_no_place_in_time_gets_a_503_and_places_come_back(stand_in_dir):
    png = encode(synthetic_image(), "PNG")
    limits = Limits(max_uploads=0, upload_seconds=0.2)
    with TestClient(create_app(stand_in_dir, limits=limits)) as client:
        r = _post(client, png, "a.png")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    with TestClient(create_app(stand_in_dir, limits=Limits(max_uploads=1))) as client:
        for _ in range(3):  # each upload gives its place back
            assert _post(client, png, "a.png").status_code == 200
        assert client.app.state.upload_slots.value == 1


def _serve(app) -> tuple[str, int, callable]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(10)

    return "127.0.0.1", port, stop


def test_a_stalled_upload_gets_a_408_and_health_keeps_answering(stand_in_dir):
    import urllib.request

    app = create_app(stand_in_dir, limits=Limits(upload_seconds=1.0))
    host, port, stop = _serve(app)
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"POST /api/analyze HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Type: multipart/form-data; boundary=xyz\r\n"
                         b"Content-Length: 100000\r\n\r\n--xyz\r\n")  # and then nothing
            with urllib.request.urlopen(f"http://{host}:{port}/api/health", timeout=5) as r:
                assert r.status == 200  # the stalled client holds no one up
            answer = sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408"), answer[:80]
        assert app.state.upload_slots.value == Limits().max_uploads
    finally:
        stop()


# ------------------------------------------------------------------ privacy and host names


def test_nothing_is_written_under_home_while_analysing_and_serving(tmp_path, stand_in_dir,
                                                                    fixtures_root):
    home = tmp_path / "home"
    home.mkdir()
    image = sorted((fixtures_root / "Images").glob("*.png"))[0]
    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from busdx.api.app import create_app\n"
        "from busdx.cli.main import main\n"
        f"assert main(['predict', {str(image)!r}, '--csv', {str(tmp_path / 'out.csv')!r}, "
        f"'--models', {str(stand_in_dir)!r}]) == 0\n"
        f"with TestClient(create_app({str(stand_in_dir)!r})) as c:\n"
        f"    r = c.post('/api/analyze', files={{'file': ('a.png', open({str(image)!r}, 'rb'))}})\n"
        "    assert r.status_code == 200, r.text\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY",
                                                            "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []


def test_the_served_card_carries_no_build_records_or_paths(stand_in_dir, tmp_path):
    from busdx.api.routers.meta import BUILD_KEYS

    card = load_card(stand_in_dir)
    card["classifier"]["training"] = {"command": "busdx train --data /work/shared/data/busbra",
                                      "checkpoint": "runs/cls/a.pt", "epochs": 12}
    card["classifier"]["note"] = "scored on /home/someone/data/fold5 and C:\\Users\\me\\x.png"
    models = tmp_path / "models"
    models.mkdir()
    for f in stand_in_dir.iterdir():
        (models / f.name).write_bytes(f.read_bytes())
    write_card(models, card)
    with TestClient(create_app(models)) as client:
        served = client.get("/api/model").json()["card"]
    text = json.dumps(served)
    assert "/work/" not in text and "/home/" not in text and "Users" not in text
    assert served["classifier"]["training"] == {"epochs": 12}
    assert served["classifier"]["threshold"] == card["classifier"]["threshold"]

    def keys(v):
        if isinstance(v, dict):
            return set(v) | set().union(*(keys(x) for x in v.values()))
        return set().union(*(keys(x) for x in v)) if isinstance(v, list) else set()

    assert not keys(served) & BUILD_KEYS


def test_the_bundled_card_is_served_without_paths():
    from busdx.api.routers.meta import ABSOLUTE_PATH, served_card

    card = load_card(REPO / "models")
    text = json.dumps(served_card(card))
    assert not ABSOLUTE_PATH.search(text) and "runs/" not in text
    assert served_card(card)["classifier"]["test"] == card["classifier"]["test"]


def test_only_allowed_host_names_are_answered(stand_in_dir):
    from busdx.cli.serve import allowed_hosts

    hosts = allowed_hosts("127.0.0.1", ["busdx.hospital.local"])
    with TestClient(create_app(stand_in_dir, allowed_hosts=hosts),
                    base_url="http://localhost:8000") as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/api/health", headers={"host": "busdx.hospital.local"}).status_code \
            == 200
        assert client.get("/api/health", headers={"host": "attacker.example:8000"}).status_code \
            == 400
    assert "0.0.0.0" not in allowed_hosts("0.0.0.0", None)
    assert "10.1.2.3" in allowed_hosts("10.1.2.3", None)


# ------------------------------------------------------------------------ busdx predict


def test_predict_reads_regular_files_only_and_never_aborts_the_batch(tmp_path, stand_in_dir,
                                                                     caplog):
    good = tmp_path / "good.png"
    good.write_bytes(encode(synthetic_image(), "PNG"))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    single = tmp_path / "single.dcm"
    single.write_bytes(_with_raw(dicom_bytes(synthetic_image(120, 160)), PIXEL_SPACING, "DS",
                                 "0.1"))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inside.png").write_bytes(good.read_bytes())
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(folder / "pipe2.png")
    (folder / "linked").symlink_to(tmp_path / "folder", target_is_directory=True)
    out = tmp_path / "out.csv"
    inputs = [good, fifo, loop, single, Path("/dev/zero"), folder]
    with caplog.at_level("WARNING"):
        rc = main(["predict", *map(str, inputs), "--csv", str(out), "--models",
                   str(stand_in_dir)])
    assert rc == 0
    import csv

    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert rows["good.png"]["error"] == "" and rows["inside.png"]["error"] == ""
    assert "not a regular file" in rows["pipe.png"]["error"]
    assert "not a regular file" in rows["zero"]["error"]
    assert rows["loop.png"]["error"]  # a link to itself
    assert rows["single.dcm"]["error"] == "" and "calibration was ignored" in \
        rows["single.dcm"]["note"]
    warned = caplog.text
    for name in ("dangling.png", "pipe2.png", "linked"):
        assert name in warned, name


def test_read_file_bounds_what_it_reads(tmp_path):
    big = tmp_path / "big.dcm"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(TooLarge):
        read_file(big, max_bytes=1024)
    with pytest.raises(InputError, match="directory"):
        read_file(tmp_path)
    assert read_file(big) == b"\0" * 2048


def test_predict_gives_an_unexpected_failure_an_error_row(tmp_path, stand_in_dir, monkeypatch):
    import csv

    import busdx.inference.pipeline as pipeline

    real = pipeline.analyze
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        p.write_bytes(encode(synthetic_image(), "PNG"))
    calls = []

    def flaky(source, *args, **kwargs):
        calls.append(source)
        if len(calls) == 1:  # a.png, the first input
            raise RuntimeError("a bug")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pipeline, "analyze", flaky)
    out = tmp_path / "out.csv"
    assert main(["predict", str(a), str(b), "--csv", str(out), "--models",
                 str(stand_in_dir)]) == 0
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert rows["a.png"]["error"].startswith("internal error (RuntimeError)")
    assert rows["b.png"]["error"] == ""


def test_blank_files_get_an_error_row(tmp_path, stand_in_dir):
    import csv

    (tmp_path / "black.png").write_bytes(encode(np.zeros((200, 200), np.uint8), "PNG"))
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path), "--csv", str(out), "--models",
                 str(stand_in_dir)]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert "blank" in row["error"] and row["probability"] == ""


def test_blank_image_errors_are_input_errors():
    assert issubclass(BlankImage, InputError) and BlankImage.status == 422


# ------------------------------------------------------------ properties: never a 5xx

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
CLIENT_ERRORS = {400, 413, 415, 422}


@st.composite
def framed_images(draw):
    """Images of any size from the smallest decodable, with black margins of any width and
    content that is speckle, one grey level, or two panes side by side."""
    h, w = draw(st.integers(8, 96)), draw(st.integers(8, 96))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["speckle", "flat", "panes"]))
    content = {"speckle": rng.integers(40, 220, (h, w)),
               "flat": np.full((h, w), draw(st.integers(0, 255))),
               "panes": np.where(np.arange(w) % max(2, w // 2) < max(1, w // 2 - 2),
                                 rng.integers(40, 220, (h, w)), 0)}[kind]
    top, bottom, left, right = (draw(st.integers(0, 40)) for _ in range(4))
    image = np.zeros((h + top + bottom, w + left + right), np.uint8)
    image[top:top + h, left:left + w] = content
    return image


@PROPERTY
@given(image=framed_images(), pane=st.sampled_from(["", "?pane=left", "?pane=right"]))
def test_any_geometry_gets_an_answer_or_a_4xx(client, image, pane):
    r = _post(client, encode(image, "PNG"), "g.png", pane)
    assert r.status_code == 200 or r.status_code in CLIENT_ERRORS, (image.shape, pane, r.text)
    if r.status_code == 200:
        assert r.json()["image"]["height"] <= image.shape[0]
    else:
        assert r.json()["detail"]


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, -0.1, 1e-300, 1e300, 0.05, 0.1]))


@PROPERTY
@given(values=st.lists(NUMBERS, min_size=1, max_size=3), delta=NUMBERS,
       box=st.tuples(*[st.one_of(st.integers(0, 400), st.just(2**32 - 1))] * 4),
       frames=st.integers(1, 3))
def test_any_dicom_calibration_and_regions_get_an_answer_or_a_4xx(client, values, delta, box,
                                                                  frames):
    image = synthetic_image(96, 128)
    stack = np.stack([image] * frames) if frames > 1 else image
    x0, y0, x1, y1 = box
    region = calibration_region(0.1, 128, 96) | {
        "PhysicalDeltaX": delta, "PhysicalDeltaY": delta, "RegionLocationMinX0": x0,
        "RegionLocationMinY0": y0, "RegionLocationMaxX1": x1, "RegionLocationMaxY1": y1}
    data = dicom_bytes(stack, regions=[region])  # boxes inverted, empty or far off the image
    raw = "\\".join(repr(float(v)) for v in values)
    data = _with_raw(data, PIXEL_SPACING, "DS", raw)
    r = _post(client, data, "c.dcm", "?frame=last")
    assert r.status_code == 200 or r.status_code in CLIENT_ERRORS, (values, delta, box, r.text)
    if r.status_code == 200:
        spacing = r.json()["image"]["pixel_spacing_mm"]
        assert spacing is None or all(0.001 <= s <= 10 for s in spacing)


LESION_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                          st.text(max_size=20), st.booleans(), st.none())


@PROPERTY
@given(views=st.lists(st.fixed_dictionaries(
    {"logit": LESION_VALUES, "lesion_found": LESION_VALUES, "model_version": LESION_VALUES},
    optional={"unusual": LESION_VALUES}), max_size=20))
def test_any_lesion_body_gets_an_answer_or_a_4xx(client, views):
    body = json.dumps({"views": views})  # NaN and Infinity written as Python writes them
    r = client.post("/api/lesion", content=body, headers={"content-type": "application/json"})
    assert r.status_code in {200, 409, 413, 422}, (body[:200], r.text[:200])
    json.loads(r.text)  # strict JSON whatever the input


# ----------------------------------------------------------------------- full data


def test_no_busbra_or_breast_scan_is_blank(busbra_root):
    """The blank rule refuses no real scan: every image of BUS-BRA and of BrEaST-Lesions-USG
    (whole scans, as users upload them) has far more than one grey level."""
    from busdx.data.index import load_index
    from busdx.inference.decode import decode
    from busdx.inference.quality import is_blank

    breast = busbra_root.parent / "breast-lesions-usg" / "images_and_masks"
    if not breast.is_dir():
        from tiers import unavailable

        unavailable(f"BrEaST-Lesions-USG is not beside BUS-BRA ({breast})")
    scans = [r.image_path for r in load_index(busbra_root).records]
    scans += sorted(p for p in breast.glob("case*.png") if "_" not in p.stem)
    assert len(scans) == 1875 + 256
    assert [p.name for p in scans if is_blank(decode(p).image)] == []
