"""``busdx dicomweb`` against a real Orthanc with its DICOMweb plugin, started here on loopback:
breast ultrasound instances are analysed once and their SR and SEG stored in their study; a
restart goes on where it stopped; a server that is down is waited for; results the server
refused are sent again without a second analysis."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests

from busdx.inference.models import Models
from busdx.pacs.dicomweb import Worker, WorkerConfig
from test_dicom_results import MODELS, _scan, study_dicom
from tiers import unavailable

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """An Orthanc with the DICOMweb plugin on loopback, its storage in ``folder``."""

    def __init__(self, folder: Path) -> None:
        exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc"
                                          if Path("/usr/sbin/Orthanc").exists() else None)
        if exe is None or not PLUGIN.is_file():
            unavailable("Orthanc and its DICOMweb plugin are not installed (Debian packages "
                        "orthanc and orthanc-dicomweb)")
        self.exe, self.folder, self.port = exe, folder, _free_port()
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "busdx-test", "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"), "HttpPort": self.port,
            "DicomPort": _free_port(), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}))
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> None:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 (kept open for Orthanc)
        self.process = subprocess.Popen([self.exe, str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not start: {(self.folder / 'orthanc.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def upload(self, data: bytes) -> None:
        requests.post(f"{self.url}/instances", data=data, timeout=10).raise_for_status()

    def series(self, modality: str) -> list[dict]:
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(f"{self.url}/dicom-web")
        return client.search_for_series(search_filters={"Modality": modality})


def _instance(body_part: str | None = "BREAST", modality: str = "US", study=None) -> bytes:
    data = study_dicom(_scan())
    ds = pydicom.dcmread(BytesIO(data))
    ds.Modality = modality
    if body_part:
        ds.BodyPartExamined = body_part
    if study:
        ds.StudyInstanceUID = study
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def models():
    return Models.load(MODELS)


@pytest.fixture()
def orthanc(tmp_path):
    server = Orthanc(tmp_path)
    server.start()
    yield server
    server.stop()


def _worker(orthanc: Orthanc, state: Path, models, **kw) -> Worker:
    return Worker(WorkerConfig(url=f"{orthanc.url}/dicom-web", state=state, **kw),
                  models=models)


@pytest.mark.slow
def test_round_trip_once_per_instance_and_across_restarts(orthanc, models, tmp_path, caplog):
    breast = [_instance(), _instance()]
    for data in [*breast, _instance("ABDOMEN"), _instance(modality="CT")]:
        orthanc.upload(data)
    state = tmp_path / "state"
    counts = _worker(orthanc, state, models).run_once()
    assert counts["analysed"] == 2 and counts["failed"] == 0
    reports = orthanc.series("SR")
    assert len(reports) == 2
    sources = {pydicom.dcmread(BytesIO(d)).SOPInstanceUID for d in breast}
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(f"{orthanc.url}/dicom-web")
    referenced = set()
    for item in reports:
        study, series = item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]
        (instance,) = client.search_for_instances(study, series)
        sr = client.retrieve_instance(study, series, instance["00080018"]["Value"][0])
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        referenced.add(evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    assert referenced == sources
    records = [json.loads(line) for line in (state / "done.jsonl").read_text().splitlines()]
    segs = len(orthanc.series("SEG"))
    assert segs == sum(r["call"] != "no lesion" for r in records)

    # a second pass, and a restarted worker, find nothing new
    assert _worker(orthanc, state, models).run_once()["analysed"] == 0
    orthanc.upload(_instance())
    assert len(_worker(orthanc, state, models).done) == 2  # a restart reads its place
    from busdx.cli.main import main

    assert main(["dicomweb", "--url", f"{orthanc.url}/dicom-web", "--state", str(state),
                 "--once", "--models", str(MODELS)]) == 0
    assert len(orthanc.series("SR")) == 3
    assert len((state / "done.jsonl").read_text().splitlines()) == 3
    assert "Test^P" not in caplog.text  # the log names instances, not patients


@pytest.mark.slow
def test_a_server_that_is_down_is_waited_for(orthanc, models, tmp_path):
    orthanc.upload(_instance())
    orthanc.stop()
    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            orthanc.start()  # back after three tries

    worker = _worker(orthanc, tmp_path / "state", models)
    worker.sleep = sleep
    counts = worker.run_once()
    assert waits == [1.0, 2.0, 4.0]  # exponential back-off
    assert counts["analysed"] == 1 and len(orthanc.series("SR")) == 1


class _RefusingOnce:
    """A DICOMweb client whose first STOW-RS is refused with a 400."""

    def __init__(self, data: bytes) -> None:
        self.dataset = pydicom.dcmread(BytesIO(data))
        self.stored, self.refused, self.retrieved = [], 0, 0

    def search_for_series(self, **_):
        return [{"0020000D": {"Value": [self.dataset.StudyInstanceUID]},
                 "0020000E": {"Value": [self.dataset.SeriesInstanceUID]}}]

    def search_for_instances(self, **_):
        return [{"00080018": {"Value": [self.dataset.SOPInstanceUID]},
                 "00080016": {"Value": [self.dataset.SOPClassUID]}}]

    def retrieve_instance(self, *_):
        self.retrieved += 1
        return self.dataset

    def store_instances(self, datasets):
        if not self.refused:
            self.refused += 1
            response = requests.Response()
            response.status_code = 400
            raise requests.HTTPError("400 Bad Request", response=response)
        self.stored += datasets


def test_refused_results_are_kept_and_sent_again_without_a_second_analysis(models, tmp_path):
    client = _RefusingOnce(_instance())
    worker = Worker(WorkerConfig(url="http://unused", state=tmp_path), client=client,
                    models=models)
    first = worker.run_once()
    assert first["analysed"] == 1 and first["stored"] == 0
    assert list((tmp_path / "pending").glob("*_sr.dcm"))
    second = worker.run_once()
    assert second["analysed"] == 0 and second["resent"] == 1
    assert client.retrieved == 1 and client.stored
    assert not list((tmp_path / "pending").iterdir())


def test_an_instance_that_cannot_be_analysed_is_recorded_and_not_retried(models, tmp_path):
    client = _RefusingOnce(_instance())
    client.dataset.PixelData = b"\x00" * 10  # broken pixels
    worker = Worker(WorkerConfig(url="http://unused", state=tmp_path), client=client,
                    models=models)
    assert worker.run_once()["failed"] == 1
    assert worker.run_once() == {"analysed": 0, "stored": 0, "failed": 0, "resent": 0}
    record = json.loads((tmp_path / "done.jsonl").read_text())
    assert "error" in record and client.retrieved == 1

