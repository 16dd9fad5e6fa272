"""``busdx dicomweb``: a worker between a PACS and busdx, over DICOMweb.

Each pass it finds breast ultrasound series on the server (QIDO-RS: modality US, body part
BREAST unless told otherwise), lists their instances, and for each one it has not handled
before: retrieves it (WADO-RS), analyses it, and stores the measurement report and, when a
lesion is found, the segmentation back into the same study (STOW-RS).

What it guarantees:

- **Never twice.** Every handled instance is appended (and flushed to disk) to
  ``STATE/done.jsonl`` with its outcome before the next is taken; a restarted worker reads
  that file and goes on where it was. An instance that cannot be analysed (not an image, a
  broken file) is recorded with its error and not tried again.
- **Nothing lost when storing fails.** Results are written to ``STATE/pending/`` before they
  are sent; an instance whose results the server did not take is retried from there, without
  being analysed again.
- **A server that is down** (connection refused, timeouts, 5xx) is retried with exponential
  back-off, up to ``max_wait`` seconds between tries; the worker never gives up while it runs.
- **Logs** say what was done to which instance (its UIDs and the call), never image content.

The worker polls (``interval`` seconds between passes). Orthanc's change feed, where the
server is Orthanc, would tell it sooner; polling works with every DICOMweb server.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from busdx.errors import BusdxError

log = logging.getLogger(__name__)

DONE_FILE = "done.jsonl"
PENDING_DIR = "pending"
# a QIDO-RS answer's DICOM JSON keys
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
SOP_CLASS, MODALITY = "00080016", "00080060"
IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (screens sent as pictures)
}


@dataclass(frozen=True)
class WorkerConfig:
    url: str  # the DICOMweb root, e.g. http://orthanc:8042/dicom-web
    state: Path  # where the worker keeps its place
    models_dir: Path | None = None
    body_part: str | None = "BREAST"  # None: every ultrasound series
    interval: float = 30.0  # seconds between passes
    max_wait: float = 300.0  # the longest wait between tries of a server that is down
    timeout: float = 60.0  # seconds per HTTP request
    headers: dict | None = None  # e.g. an Authorization header for the server


def _value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


class Unreachable(Exception):
    """The server did not answer, or answered with a 5xx: worth trying again."""


def _is_transient(err: Exception) -> bool:
    import requests

    if isinstance(err, (requests.ConnectionError, requests.Timeout)):
        return True
    response = getattr(err, "response", None)
    return response is not None and response.status_code >= 500


class Worker:
    def __init__(self, config: WorkerConfig, client=None, models=None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        if client is None:
            client = DICOMwebClient(config.url, headers=config.headers, timeout=config.timeout)
            # one retry policy, the worker's (it waits longer, and says so in the log)
            client.set_http_retry_params(retry=False)
        self.client = client
        if models is None:
            from busdx.inference.models import Models

            models = Models.load(config.models_dir)
        self.models = models
        self.sleep = sleep
        config.state.mkdir(parents=True, exist_ok=True)
        (config.state / PENDING_DIR).mkdir(exist_ok=True)
        self.done = self._read_done()

    # ------------------------------------------------------------------ state
    def _read_done(self) -> set[str]:
        path = self.config.state / DONE_FILE
        done = set()
        if path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    done.add(json.loads(line)["sop"])
                except (ValueError, KeyError):  # a line cut short by a crash mid-write
                    log.warning("%s line %d is not a record: ignored", path, number)
        return done

    def _record(self, sop: str, outcome: dict) -> None:
        with open(self.config.state / DONE_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"sop": sop, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                   time.gmtime()), **outcome})
                     + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done.add(sop)

    # ------------------------------------------------------------------ server calls
    def _call(self, what: str, function, *args, **kwargs):
        """``function(*args, **kwargs)``, retried while the server is down."""
        wait = 1.0
        while True:
            try:
                return function(*args, **kwargs)
            except Exception as err:
                if not _is_transient(err):
                    raise
                log.warning("the DICOMweb server did not answer (%s: %s): trying again in "
                            "%.0f s", what, type(err).__name__, wait)
                self.sleep(wait)
                wait = min(wait * 2, self.config.max_wait)

    def candidates(self) -> Iterator[tuple[str, str, str]]:
        """(study, series, instance) of every ultrasound image instance on the server that
        has not been handled."""
        filters = {"Modality": "US"}
        if self.config.body_part:
            filters["BodyPartExamined"] = self.config.body_part
        series = self._call("QIDO-RS series", self.client.search_for_series,
                            search_filters=filters, get_remaining=True)
        for item in series:
            study, uid = _value(item, STUDY_UID), _value(item, SERIES_UID)
            if not study or not uid:
                continue
            instances = self._call("QIDO-RS instances", self.client.search_for_instances,
                                   study_instance_uid=study, series_instance_uid=uid,
                                   get_remaining=True)
            for instance in instances:
                sop = _value(instance, SOP_UID)
                kind = _value(instance, SOP_CLASS)
                if sop and sop not in self.done and (kind is None or kind in IMAGE_CLASSES):
                    yield study, uid, sop

    # ------------------------------------------------------------------ one pass
    def run_once(self) -> dict[str, int]:
        """One pass: pending results sent, new instances analysed; what was done, counted."""
        counts = {"analysed": 0, "stored": 0, "failed": 0, "resent": self._send_pending()}
        for study, series, sop in list(self.candidates()):
            outcome = self._handle(study, series, sop)
            counts["analysed" if "call" in outcome else "failed"] += 1
            counts["stored"] += outcome.get("stored", 0)
        if any(counts.values()):
            log.info("pass done: %(analysed)d analysed, %(failed)d failed, %(stored)d "
                     "objects stored, %(resent)d pending results sent", counts)
        return counts

    def _handle(self, study: str, series: str, sop: str) -> dict:
        from busdx.inference.dicom_results import dicom_files
        from busdx.inference.pipeline import analyze

        try:
            dataset = self._call("WADO-RS", self.client.retrieve_instance, study, series, sop)
        except Exception as err:  # gone since it was listed, or refused: not ours to retry
            log.warning("instance %s of study %s could not be retrieved: %s", sop, study, err)
            outcome = {"study": study, "error": f"not retrieved: {type(err).__name__}"}
            self._record(sop, outcome)
            return outcome
        try:
            buf = BytesIO()
            dataset.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
            del dataset, buf
            analysis = analyze(data, self.models, render_overlays=False)
            files = dicom_files(data, analysis)
        except Exception as err:  # the instance's fault: recorded, never retried
            message = str(err) if isinstance(err, (BusdxError, ValueError, OSError)) else (
                f"internal error ({type(err).__name__})")
            log.warning("instance %s of study %s not analysed: %s", sop, study, message)
            outcome = {"study": study, "error": message}
            self._record(sop, outcome)
            return outcome
        pending = self.config.state / PENDING_DIR
        for suffix, part10 in files.items():
            tmp = pending / f".{sop}{suffix}.dcm.tmp"
            tmp.write_bytes(part10)
            os.replace(tmp, pending / f"{sop}{suffix}.dcm")
        outcome = {"study": study, "call": analysis.label,
                   "model_version": analysis.model_version, "objects": len(files)}
        # analysed: recorded before storing, so a crash now never analyses it again
        self._record(sop, outcome)
        log.info("instance %s of study %s: %s; storing %s", sop, study, analysis.label,
                 " and ".join(k.strip("_").upper() for k in files))
        stored = self._send(sop)
        return {**outcome, "stored": stored}

    def _send(self, sop: str) -> int:
        import pydicom

        paths = sorted((self.config.state / PENDING_DIR).glob(f"{sop}_*.dcm"))
        if not paths:
            return 0
        datasets = [pydicom.dcmread(p) for p in paths]
        try:
            self._call("STOW-RS", self.client.store_instances, datasets)
        except Exception as err:  # refused (4xx): kept in pending/ for a person to look at
            log.error("the server refused the results of instance %s (%s): kept in %s", sop,
                      err, self.config.state / PENDING_DIR)
            return 0
        for path in paths:
            path.unlink()
        return len(paths)

    def _send_pending(self) -> int:
        sops = sorted({p.name.split("_")[0]
                       for p in (self.config.state / PENDING_DIR).glob("*_*.dcm")})
        return sum(self._send(sop) > 0 for sop in sops)

    def run(self, passes: int | None = None) -> None:
        """Pass after pass, ``interval`` seconds apart (``passes``: stop after that many)."""
        done = 0
        while passes is None or done < passes:
            self.run_once()
            done += 1
            if passes is None or done < passes:
                self.sleep(self.config.interval)
