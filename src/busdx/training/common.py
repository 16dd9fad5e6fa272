"""Helpers shared by the training tasks: seeding, device, hardware description, atomic
checkpoints, and the cache of letterboxed images."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from busdx.data.index import Record
from busdx.data.preprocess import load_gray, load_mask, prepare_pair
from busdx.hardware import describe

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def hardware_description(device: torch.device | str, threads: int) -> dict:
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return describe(threads, device.type, gpu, torch=torch.__version__)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to a temporary file beside ``path``, on disk, then move it over ``path``:
    a run killed (or a disk filled) mid-write leaves the previous checkpoint whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())  # else a power cut after the rename may leave an empty file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if the write failed


def _cache_key(records: Sequence[Record], size: int) -> str:
    h = hashlib.sha1(f"{size}".encode())
    for r in records:
        mask = Path(r.mask_path).resolve() if r.mask_path else "no lesion"
        h.update(f"{Path(r.image_path).resolve()}|{mask}\n".encode())
    return h.hexdigest()[:16]


def letterboxed_arrays(
    records: Sequence[Record], size: int = 224, cache_dir: Path | None = Path("cache")
) -> tuple[np.ndarray, np.ndarray]:
    """All images and masks letterboxed to ``size``: (float16 [N,S,S] in [0,1], uint8 [N,S,S]).

    Decoding and resizing ~1,900 PNGs takes a minute; epochs read the cached compressed arrays.
    A record without a mask (a scan without a lesion) gets an empty one.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"seg{size}_{_cache_key(records, size)}.npz"
        if path.is_file():
            with np.load(path) as data:
                return data["images"], data["masks"]
    images = np.zeros((len(records), size, size), dtype=np.float16)
    masks = np.zeros((len(records), size, size), dtype=np.uint8)
    for i, r in enumerate(records):
        gray = load_gray(r.image_path)
        mask = load_mask(r.mask_path) if r.mask_path else np.zeros(gray.shape, np.uint8)
        image, mask, _ = prepare_pair(gray, mask, size)
        images[i], masks[i] = image, mask
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Per-process name: runs started side by side may fill the same cache at once.
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, images=images, masks=masks)
        os.replace(tmp, path)
        log.info("cached %d letterboxed images in %s", len(records), path)
    return images, masks


def lesion_free_arrays(
    records: Sequence[Record], size: int = 224, cache_dir: Path | None = Path("cache")
) -> np.ndarray:
    """The lesion-free window (busdx.data.windows) of each image that has one, letterboxed to
    ``size`` (float16 [M,S,S]): samples whose target is an empty mask."""
    from busdx.data.windows import lesion_free_cut

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"free{size}_{_cache_key(records, size)}.npz"
        if path.is_file():
            with np.load(path) as data:
                return data["images"]
    windows = []
    for r in records:
        if not r.mask_path:  # a scan without a lesion is lesion-free already
            continue
        crop = lesion_free_cut(load_gray(r.image_path), load_mask(r.mask_path))
        if crop is not None:
            windows.append(prepare_pair(crop, np.zeros(crop.shape, np.uint8), size)[0])
    images = np.stack(windows).astype(np.float16) if windows else np.zeros((0, size, size),
                                                                           np.float16)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, images=images)
        os.replace(tmp, path)
        log.info("cached %d lesion-free windows in %s", len(images), path)
    return images
