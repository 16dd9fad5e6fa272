"""busdx: decision support for breast ultrasound. Not a medical device and not a diagnosis."""

import os
from pathlib import Path

__version__ = "0.1.0"

# ONNX Runtime keeps a usage database under ~/.cache/Microsoft (model names, machine details)
# and queues events for Microsoft unless this is set before it is first imported; nothing
# about a hospital's use of busdx leaves the machine. Set to 0 beforehand to decide otherwise.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

DISCLAIMER = (
    "busdx is decision support for trained readers, not a diagnosis and not a medical device. "
    "Every result must be checked by a qualified clinician."
)


def repository_folder(env: str, name: str) -> Path:
    """$``env`` when it is set, else the repository's folder ``name`` (next to src/)."""
    value = os.environ.get(env)
    return Path(value) if value else Path(__file__).resolve().parents[2] / name
