"""What a run or an evaluation ran on: one description for every record (torch-free, so the
ONNX-only evaluations can use it) and one way to print it in the model card."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(threads: int, device: str = "cpu", gpu: str | None = None, **versions: str) -> dict:
    """``device`` is where the work ran ("cpu" or "cuda"); ``versions`` name the engine
    (torch=..., onnxruntime=...)."""
    info = {"device": device, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads, **versions}
    if gpu:
        info["gpu"] = gpu
    return info


def hardware_text(value: dict | str | None) -> str:
    """One readable line, e.g. "NVIDIA H200 GPU (16-core Intel Xeon host), torch 2.11, 2
    threads". Older records hold a plain string, which is returned as is."""
    if not isinstance(value, dict):
        return "not recorded" if value is None else str(value)
    cores = f"{value['cpu_count']}-core " if value.get("cpu_count") else ""
    host = f"{cores}{value.get('cpu', 'unknown')}"
    where = f"{value['gpu']} GPU ({host} host)" if value.get("gpu") else f"CPU only, {host}"
    engines = [f"{k} {value[k]}" for k in ("torch", "onnxruntime") if value.get(k)]
    threads = value.get("threads", value.get("torch_threads"))
    tail = [*engines, f"{threads} thread(s)"] if threads is not None else engines
    return ", ".join([where, *tail])
