"""Fuzzing the upload path: mutated PNG, JPEG and DICOM files (and mutated multipart bodies)
posted to /api/analyze. Whatever the bytes, the answer is a 200 with a result or a 4xx with a
JSON ``detail``: never a 500, never a crash. Bounded (a fixed number of derandomised examples
per format) so the suite stays fast and repeatable."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from busdx.api.app import create_app
from stand_in_models import (
    build_stand_in_models,
    calibration_region,
    dicom_bytes,
    synthetic_image,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on fuzzed tags

FIXTURE_IMAGES = Path(__file__).resolve().parent / "fixtures" / "busbra" / "Images"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure is reproducible, never flaky
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    models = build_stand_in_models(tmp_path_factory.mktemp("models"))
    # A 500 must show up as a status to assert on, not as an exception inside the test client.
    with TestClient(create_app(models), raise_server_exceptions=False) as client:
        yield client


def _fixture_png() -> bytes:
    return sorted(FIXTURE_IMAGES.glob("*.png"))[0].read_bytes()


def _fixture_jpeg() -> bytes:
    buf = io.BytesIO()
    with Image.open(io.BytesIO(_fixture_png())) as img:
        img.convert("L").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _fixture_dicom() -> bytes:
    image = synthetic_image(160, 200, seed=3)
    return dicom_bytes(image, regions=[calibration_region(0.1, 200, 160)])


SEEDS = {"png": _fixture_png(), "jpeg": _fixture_jpeg(), "dicom": _fixture_dicom()}

# A mutation: (kind, where, value). ``where`` is a position in the file: small integers aim at
# the header (where parsers branch), fractions reach anywhere in the pixel data.
POSITION = st.one_of(st.integers(0, 400), st.floats(0.0, 1.0))
MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "truncate", "insert", "delete", "repeat"]),
    POSITION,
    st.binary(min_size=1, max_size=32),
)


def _at(position: int | float, length: int) -> int:
    if isinstance(position, float):
        return int(position * max(length - 1, 0))
    return min(position, max(length - 1, 0))


def mutate(data: bytes, mutations: list[tuple[str, int | float, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, position, value in mutations:
        if not buf:
            buf.extend(value)
            continue
        i = _at(position, len(buf))
        if kind == "flip":
            buf[i] ^= 1 << (value[0] % 8)
        elif kind == "set":
            buf[i : i + len(value)] = value
        elif kind == "truncate":
            del buf[i:]
        elif kind == "insert":
            buf[i:i] = value
        elif kind == "delete":
            del buf[i : i + value[0]]
        elif kind == "repeat":
            buf[i:i] = buf[i : i + value[0]] * 2
    return bytes(buf)


def _check(response) -> None:
    status = response.status_code
    assert status == 200 or 400 <= status < 500, (status, response.text[:500])
    body = response.json()
    if status == 200:
        assert 0.0 <= body["probability"] <= 1.0
        assert body["label"] in ("benign", "malignant", "no lesion")
        assert (body["label"] == "no lesion") == (not body["lesion_found"])
    else:
        assert isinstance(body.get("detail"), str) and body["detail"]


def _post(client, data: bytes, name: str):
    return client.post("/api/analyze", files={"file": (name, data, "application/octet-stream")})


def test_unmutated_seeds_are_analysed(client):
    for fmt, data in SEEDS.items():
        response = _post(client, data, f"seed.{fmt}")
        assert response.status_code == 200, (fmt, response.text[:300])


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_png(client, mutations):
    _check(_post(client, mutate(SEEDS["png"], mutations), "fuzz.png"))


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_jpeg(client, mutations):
    _check(_post(client, mutate(SEEDS["jpeg"], mutations), "fuzz.jpg"))


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_dicom(client, mutations):
    _check(_post(client, mutate(SEEDS["dicom"], mutations), "fuzz.dcm"))


@settings(FUZZ, max_examples=30)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4), fmt=st.sampled_from(sorted(SEEDS)))
def test_mutated_multipart_body(client, mutations, fmt):
    """The multipart framing itself damaged: boundaries, headers, field names."""
    boundary = "busdxfuzzboundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.{fmt}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + SEEDS[fmt][:4096] + f"\r\n--{boundary}--\r\n".encode()
    response = client.post(
        "/api/analyze", content=mutate(body, mutations),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    _check(response)


def test_mutate_is_deterministic_and_changes_bytes():
    data = bytes(range(256))
    mutations = [("flip", 3, b"\x01"), ("truncate", 0.5, b"\x00")]
    assert mutate(data, mutations) == mutate(data, mutations)
    out = mutate(data, mutations)
    assert len(out) == 127 and out[3] == data[3] ^ 2
    assert np.frombuffer(out, np.uint8)[4:].tolist() == list(range(4, 127))


@FUZZ
@given(width=st.integers(2, 300), height=st.integers(2, 120), start=st.floats(0.0, 1.0),
       span=st.floats(0.0, 0.6), side=st.sampled_from(["left", "right"]))
def test_any_image_given_as_a_dual_view_is_split_or_refused(client, width, height, start, span,
                                                            side):
    """Noise with a black band anywhere (or nowhere): a pane is analysed, or the capture is
    refused with a reason; never a 500."""
    rng = np.random.default_rng(width * 1000 + height)
    image = (rng.random((height, width)) * 255).astype(np.uint8)
    a = int(start * width)
    image[:, a:min(width, a + int(span * width))] = 0
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    response = client.post(f"/api/analyze?pane={side}",
                           files={"file": ("dual.png", buf.getvalue(), "image/png")})
    _check(response)
    if response.status_code == 200:
        assert response.json()["image"]["pane"]["side"] == side
