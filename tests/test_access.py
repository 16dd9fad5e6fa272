"""Access control, the audit log, Prometheus metrics and the DICOM route of the API."""

from __future__ import annotations

import base64
import json
import logging
from io import BytesIO

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from busdx.api.access import Access, load_tokens, parse_tokens
from busdx.api.app import create_app
from busdx.cli.main import main
from busdx.errors import BusdxError
from busdx.inference.models import Models
from stand_in_models import encode, synthetic_image

TOKEN = "a-long-enough-token-for-alice"
PNG = encode(synthetic_image(), "PNG")


@pytest.fixture(scope="module")
def models(stand_in_dir):
    return Models.load(stand_in_dir)


def _client(models, access: Access) -> TestClient:
    return TestClient(create_app(models=models, access=access))


def _analyze(client, headers=None, name="patient-jane-doe.png"):
    return client.post("/api/analyze?images=none", files={"file": (name, PNG, "image/png")},
                       headers=headers or {})


def test_without_a_token_the_api_answers_401_and_the_probes_answer(models):
    with _client(models, Access(tokens={"alice": TOKEN})) as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/api/ready").json()["status"] == "ready"
        assert client.get("/").status_code == 200  # the page itself: it asks for the token
        for response in (client.get("/api/model"), _analyze(client), client.get("/metrics"),
                         _analyze(client, {"Authorization": "Bearer not-the-token"}),
                         _analyze(client, {"Authorization": TOKEN})):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/model", headers=good).status_code == 200
        assert _analyze(client, good).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200


def test_each_analysis_is_audited_without_image_or_file_name(models, caplog):
    with _client(models, Access(tokens={"alice": TOKEN})) as client, \
            caplog.at_level(logging.INFO, logger="busdx.audit"):
        answer = _analyze(client, {"Authorization": f"Bearer {TOKEN}"}).json()
    lines = [r.getMessage() for r in caplog.records if r.name == "busdx.audit"]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"time", "client", "route", "model_version", "call"}
    assert record["client"] == "alice" and record["route"] == "/api/analyze"
    assert record["call"] == answer["label"]
    assert record["model_version"] == answer["model_version"]
    assert "jane" not in lines[0]


def test_metrics_count_requests_errors_and_analyses_by_call(models):
    with _client(models, Access()) as client:
        label = _analyze(client).json()["label"]
        _analyze(client)
        client.post("/api/analyze", files={"file": ("x.png", b"not an image", "image/png")})
        text = client.get("/metrics").text
    assert f'busdx_analyses_total{{call="{label}"}} 2.0' in text
    assert 'busdx_requests_total{method="POST",route="/api/analyze",status="200"} 2.0' in text
    assert 'route="/api/analyze",status="415"' in text
    assert 'busdx_request_seconds_count{route="/api/analyze"} 3.0' in text
    assert "busdx_errors_total" in text


def test_a_trusted_proxy_alone_is_answered_and_names_the_user(models, caplog):
    # TestClient connects from the address "testclient"
    with _client(models, Access(trusted_proxy="testclient")) as client, \
            caplog.at_level(logging.INFO, logger="busdx.audit"):
        assert _analyze(client, {"X-Forwarded-User": "dr.who"}).status_code == 200
    record = json.loads([r.getMessage() for r in caplog.records if r.name == "busdx.audit"][0])
    assert record["client"] == "proxy:dr.who"
    with _client(models, Access(trusted_proxy="10.1.2.3")) as client:
        assert _analyze(client).status_code == 401
        assert client.get("/api/health").status_code == 200


def test_serving_beyond_loopback_needs_tokens_or_a_proxy(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("BUSDX_TOKENS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--token-file" in caplog.text and "--trusted-proxy" in caplog.text
    file = tmp_path / "tokens"
    file.write_text(f"# clients\nalice:{TOKEN}\nbob: {TOKEN}-bob\n")
    file.chmod(0o600)
    assert load_tokens(file) == {"alice": TOKEN, "bob": f"{TOKEN}-bob"}
    monkeypatch.setenv("BUSDX_TOKENS", f"carol:{TOKEN}-carol")
    assert set(load_tokens(file)) == {"alice", "bob", "carol"}
    with pytest.raises(BusdxError, match="at least 16"):
        parse_tokens("short:abc", "the file")
    with pytest.raises(BusdxError, match="twice"):
        parse_tokens(f"a:{TOKEN}\na:{TOKEN}x", "the file")


def test_the_dicom_route_returns_a_report_and_a_segmentation(models):
    from test_dicom_results import MODELS, _scan, study_dicom

    data = study_dicom(_scan())
    with TestClient(create_app(models=Models.load(MODELS))) as client:
        answer = client.post("/api/analyze/dicom",
                             files={"file": ("scan.dcm", data, "application/dicom")}).json()
        refused = client.post("/api/analyze/dicom", files={"file": ("x.png", PNG, "image/png")})
    assert refused.status_code == 415
    sr = pydicom.dcmread(BytesIO(base64.b64decode(answer["dicom"]["sr"])))
    source = pydicom.dcmread(BytesIO(data))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
    if answer["lesion_found"]:
        seg = pydicom.dcmread(BytesIO(base64.b64decode(answer["dicom"]["seg"])))
        assert seg.Modality == "SEG"
        assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert np.asarray(seg.pixel_array).any()
    else:
        assert answer["dicom"]["seg"] is None
