"""A bounded load test of ``busdx serve`` on the loopback address only.

Starts the real server (``busdx serve --host 127.0.0.1`` on a free port) in a subprocess, then
16 client threads send 1,000 POST /api/analyze requests between them, a seeded mix of valid
fold-5 images and invalid uploads (empty, random bytes, truncated PNG, text, GIF, a wrong
multipart field), while one more thread polls GET /api/health every 200 ms. Recorded: every
status code, 5xx and connection errors (must be zero), latency percentiles, whether health kept
answering, and the server's memory from /proc/PID/status (VmRSS before, after warm-up, after the
run; VmHWM for the peak). Growth is measured after the run against the warmed-up server.
Meanwhile a few slow clients send the start of an upload and then nothing: each must get a 408
once the server's upload timeout (set short here) has passed, without holding anyone up.

    python benchmarks/load_test.py --data ../shared/data/busbra
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import (
    add_common_args,
    fold_images,
    machine,
    models_info,
    percentiles,
    setup_logging,
    versions,
    write_result,
)

log = logging.getLogger("benchmarks.load_test")

HOST = "127.0.0.1"  # loopback only: this test never binds or connects anywhere else
MAX_GROWTH_MB = 50.0


@dataclass(frozen=True)
class Payload:
    kind: str  # "valid_png", "valid_jpeg" or an invalid kind
    data: bytes
    field: str = "file"
    filename: str = "upload.png"

    @property
    def valid(self) -> bool:
        return self.kind.startswith("valid")


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: the connection failed
    ms: float
    error: str = ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak so far) of a process, in MB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024.0, 1)
    except (OSError, ValueError):
        pass
    return out


# ---------------------------------------------------------------------------- payloads


def valid_payloads(paths: list[Path], jpeg_every: int = 5) -> list[Payload]:
    """The images as PNG files, and every ``jpeg_every``-th one re-encoded as JPEG too."""
    from PIL import Image

    out = []
    for i, path in enumerate(paths):
        data = path.read_bytes()
        out.append(Payload("valid_png", data, filename=path.name))
        if i % jpeg_every == 0:
            buf = io.BytesIO()
            with Image.open(io.BytesIO(data)) as img:
                img.convert("L").save(buf, format="JPEG", quality=90)
            out.append(Payload("valid_jpeg", buf.getvalue(), filename=path.stem + ".jpg"))
    return out


def invalid_payloads(sample_png: bytes, seed: int = 0) -> list[Payload]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    gif = io.BytesIO()
    Image.new("L", (64, 64)).save(gif, format="GIF")
    return [
        Payload("empty", b""),
        Payload("random_bytes", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                filename="noise.bin"),
        Payload("truncated_png", sample_png[: len(sample_png) // 3]),
        Payload("png_header_garbage", sample_png[:16] + rng.integers(0, 256, 2048,
                                                                     dtype=np.uint8).tobytes()),
        Payload("text", b"this is a text file, not an ultrasound image\n" * 20,
                filename="notes.txt"),
        Payload("gif", gif.getvalue(), filename="a.gif"),
        Payload("wrong_field", sample_png, field="image"),
    ]


def request_plan(valid: list[Payload], invalid: list[Payload], n: int, invalid_fraction: float,
                 seed: int = 0) -> list[Payload]:
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(n):
        pool = invalid if rng.random() < invalid_fraction else valid
        plan.append(pool[int(rng.integers(len(pool)))])
    return plan


# ---------------------------------------------------------------------------- server


def start_server(models: str | None, port: int, log_path: Path, upload_timeout: float
                 ) -> subprocess.Popen:
    command = [sys.executable, "-m", "busdx.cli.main", "serve", "--host", HOST,
               "--port", str(port), "--upload-timeout", str(upload_timeout)]
    if models:
        command += ["--models", str(models)]
    logfile = log_path.open("wb")
    return subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"busdx serve exited with {proc.returncode} before answering")
        try:
            if httpx.get(f"{base}/api/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"busdx serve did not answer /api/health within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------------------- clients


def post(client, base: str, payload: Payload) -> Outcome:
    import httpx

    start = time.perf_counter()
    try:
        response = client.post(
            f"{base}/api/analyze",
            files={payload.field: (payload.filename, payload.data, "application/octet-stream")},
        )
        ms = (time.perf_counter() - start) * 1000.0
        error = ""
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
                error = "" if isinstance(detail, str) and detail else "4xx without a detail"
            except ValueError:
                error = "non-JSON error body"
        return Outcome(payload.kind, response.status_code, ms, error)
    except httpx.HTTPError as err:
        return Outcome(payload.kind, None, (time.perf_counter() - start) * 1000.0,
                       f"{type(err).__name__}: {err}"[:200])


def run_clients(base: str, plan: list[Payload], clients: int, timeout: float,
                deadline: float) -> list[Outcome]:
    import httpx

    work: queue.Queue[Payload] = queue.Queue()
    for p in plan:
        work.put(p)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(timeout=timeout) as client:
            while time.monotonic() < deadline:
                try:
                    payload = work.get_nowait()
                except queue.Empty:
                    return
                outcome = post(client, base, payload)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


class HealthPoller(threading.Thread):
    def __init__(self, base: str, interval: float = 0.2):
        super().__init__(daemon=True)
        self.base, self.interval = base, interval
        self.stop = threading.Event()
        self.samples: list[tuple[float, int | None, float]] = []  # (when, status, ms)

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=10.0) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    status: int | None = client.get(f"{self.base}/api/health").status_code
                except httpx.HTTPError:
                    status = None
                ms = (time.perf_counter() - start) * 1000.0
                self.samples.append((time.monotonic(), status, ms))
                self.stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        ok = [(t, ms) for t, s, ms in self.samples if s == 200]
        times = [t for t, _ in ok]
        gaps = np.diff(times) if len(times) > 1 else np.array([0.0])
        return {
            "requests": len(self.samples),
            "ok": len(ok),
            "failed": len(self.samples) - len(ok),
            "latency_ms": percentiles([ms for _, ms in ok]),
            "longest_gap_between_answers_s": round(float(gaps.max()), 2),
        }


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop = threading.Event()
        self.rss: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            rss = proc_memory_mb(self.pid).get("VmRSS")
            if rss is not None:
                self.rss.append(rss)
            self.stop.wait(self.interval)


# ---------------------------------------------------------------------------- main


class SlowClient(threading.Thread):
    """Sends the headers and the first bytes of an upload, then nothing; records the status the
    server answers with and after how long."""

    def __init__(self, port: int, wait: float):
        super().__init__(daemon=True)
        self.port, self.wait = port, wait
        self.status: int | None = None
        self.seconds: float | None = None

    def run(self) -> None:
        start = time.monotonic()
        try:
            with socket.create_connection((HOST, self.port), timeout=self.wait) as sock:
                sock.sendall(b"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: multipart/form-data; boundary=slow\r\n"
                             b"Content-Length: 1000000\r\n\r\n--slow\r\nContent-Disposition: "
                             b"form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
                             + b"\0" * 1024)
                answer = sock.recv(64)
            self.status = int(answer.split()[1]) if answer.startswith(b"HTTP/") else None
        except (OSError, ValueError, IndexError):
            self.status = None
        self.seconds = round(time.monotonic() - start, 2)


def summarise(outcomes: list[Outcome], wall: float) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else "connection_error"
        statuses[key] = statuses.get(key, 0) + 1
        kind = by_kind.setdefault(o.kind, {})
        kind[key] = kind.get(key, 0) + 1
    valid = [o for o in outcomes if o.kind.startswith("valid")]
    invalid = [o for o in outcomes if not o.kind.startswith("valid")]
    answered = [o for o in outcomes if o.status is not None]
    return {
        "requests": len(outcomes),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(outcomes) / wall, 2) if wall else None,
        "statuses": dict(sorted(statuses.items())),
        "by_kind": by_kind,
        "server_errors_5xx": sum(1 for o in answered if o.status >= 500),
        "connection_errors": sum(1 for o in outcomes if o.status is None),
        "connection_error_examples": sorted({o.error for o in outcomes if o.status is None})[:5],
        "valid_not_200": sum(1 for o in valid if o.status != 200),
        "invalid_not_4xx": sum(1 for o in invalid if o.status is None or not 400 <= o.status < 500),
        "errors_without_detail": sum(1 for o in answered if o.status >= 400 and o.error),
        "latency_ms_all": percentiles([o.ms for o in answered]),
        "latency_ms_valid": percentiles([o.ms for o in valid if o.status is not None]),
        "latency_ms_invalid": percentiles([o.ms for o in invalid if o.status is not None]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    images = fold_images(args.data, limit=args.images)
    valid = valid_payloads([i.path for i in images])
    invalid = invalid_payloads(valid[0].data)
    plan = request_plan(valid, invalid, args.requests, args.invalid_fraction)
    port = free_port()
    base = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="busdx-load-") as tmp:
        log_path = Path(tmp) / "server.log"
        proc = start_server(args.models, port, log_path, args.upload_timeout)
        try:
            wait_healthy(base, proc, args.startup_timeout)
            mem_started = proc_memory_mb(proc.pid)
            # Warm-up at the run's own concurrency, so the baseline already holds the worker
            # threads and allocator arenas that steady load needs: growth then means leaks.
            warm_plan = request_plan(valid, invalid, args.warmup, args.invalid_fraction, seed=1)
            run_clients(base, warm_plan, args.clients, args.request_timeout,
                        time.monotonic() + args.max_seconds)
            mem_warm = proc_memory_mb(proc.pid)
            poller, sampler = HealthPoller(base), MemorySampler(proc.pid)
            poller.start()
            sampler.start()
            slow = [SlowClient(port, args.upload_timeout + 30) for _ in range(args.slow_clients)]
            for client in slow:
                client.start()
            log.info("%d requests from %d clients against %s", len(plan), args.clients, base)
            start = time.monotonic()
            outcomes = run_clients(base, plan, args.clients, args.request_timeout,
                                   start + args.max_seconds)
            wall = time.monotonic() - start
            for client in slow:
                client.join(args.upload_timeout + 35)
            time.sleep(args.settle)
            poller.stop.set()
            sampler.stop.set()
            poller.join(15)
            sampler.join(5)
            mem_after = proc_memory_mb(proc.pid)
            alive = proc.poll() is None
        finally:
            stop_server(proc)
        server_log_tail = log_path.read_text(errors="replace")[-3000:]
    summary = summarise(outcomes, wall)
    growth = round(mem_after.get("VmRSS", 0.0) - mem_warm.get("VmRSS", 0.0), 1)
    health = poller.summary()
    memory = {
        "rss_after_start_mb": mem_started.get("VmRSS"),
        "rss_after_warmup_mb": mem_warm.get("VmRSS"),
        "rss_after_run_mb": mem_after.get("VmRSS"),
        "rss_sampled_max_mb": max(sampler.rss) if sampler.rss else None,
        "peak_vmhwm_mb": mem_after.get("VmHWM"),
        "growth_after_run_mb": growth,
        "growth_since_start_mb": round(mem_after.get("VmRSS", 0.0)
                                       - mem_started.get("VmRSS", 0.0), 1),
    }
    checks = {
        "no_5xx": summary["server_errors_5xx"] == 0,
        "no_dropped_connections": summary["connection_errors"] == 0,
        "all_requests_sent": summary["requests"] == len(plan),
        "memory_growth_within_50mb": growth <= MAX_GROWTH_MB,
        "health_answered_throughout": health["failed"] == 0 and health["ok"] > 0,
        "server_alive_after_run": alive,
        "slow_clients_timed_out": all(c.status == 408 for c in slow),
    }
    return {
        "benchmark": "load_test",
        "machine": machine(),
        "versions": versions(),
        "models": models_info(args.models),
        "address": base,
        "clients": args.clients,
        "planned_requests": len(plan),
        "invalid_fraction": args.invalid_fraction,
        "distinct_valid_files": len(valid),
        "invalid_kinds": [p.kind for p in invalid],
        "warmup_requests": args.warmup,
        **summary,
        "health": health,
        "slow_clients": {"clients": len(slow), "upload_timeout_s": args.upload_timeout,
                         "statuses": [c.status for c in slow],
                         "seconds": [c.seconds for c in slow]},
        "memory": memory,
        "checks": checks,
        "passed": all(checks.values()),
        "server_log_tail": server_log_tail if not all(checks.values()) else "",
    }


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--invalid-fraction", type=float, default=0.3)
    parser.add_argument("--images", type=int, default=60, help="distinct fold-5 images sent")
    parser.add_argument("--warmup", type=int, default=48,
                        help="requests sent (at full concurrency) before the measured run")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="stop sending new requests after this long")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--slow-clients", type=int, default=4,
                        help="clients that start an upload and stall (each must get a 408)")
    parser.add_argument("--upload-timeout", type=float, default=3.0,
                        help="the server's upload timeout for this run (busdx serve "
                             "--upload-timeout), short so the slow clients end soon")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after the run before memory is read")
    args = parser.parse_args(argv)
    result = run(args)
    write_result(args.out, "load_test", result)
    log.info("%d requests: statuses %s, 5xx %d, connection errors %d, p95 %.0f ms, "
             "memory growth %.1f MB, passed %s", result["requests"], result["statuses"],
             result["server_errors_5xx"], result["connection_errors"],
             result["latency_ms_all"].get("p95", float("nan")),
             result["memory"]["growth_after_run_mb"], result["passed"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
