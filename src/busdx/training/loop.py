"""The training loop shared by every task (segmentation, classification).

A task hands the loop its pieces (:class:`Task`): the network, its optimizer, the shape of its
learning-rate schedule, each epoch's batches, the loss of a batch and a validation that returns
metrics. The loop does the rest the same way for every task:

- the schedule counts optimizer steps: ``total_steps = epochs * steps_per_epoch`` is fixed before
  the first step, so a run's learning rates follow from its recipe, never from the clock;
- the epoch with the best validation ``Task.metric`` (higher is better) is written to the task's
  file; the run stops early after ``patience`` epochs without a better one;
- ``max_minutes`` is a hard stop only: no epoch starts that would end past it (at the mean epoch
  time so far), and the result says the run stopped for time;
- ``last.pt`` after every epoch holds what a resumed run needs to go on exactly as if it had
  never stopped: weights, optimizer, scheduler, random states, epoch, step, best and history;
- every checkpoint is written beside its final name and then moved over it
  (:func:`~busdx.training.common.save_checkpoint`), so a crash mid-write leaves the previous one.

One epoch, in order: stop checks, ``steps_per_epoch`` optimizer steps (each followed by one
scheduler step), validation, best checkpoint if improved, ``last.pt``, one log line.

Under torchrun (:mod:`busdx.training.distributed`) each process runs this same loop on its share
of every batch; the loss goes through DistributedDataParallel, rank 0 alone validates and writes,
and the decisions to stop are rank 0's, so that every process stops at the same epoch.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from busdx.errors import BusdxError
from busdx.training import distributed
from busdx.training.common import save_checkpoint
from busdx.training.config import CONFIG_FILE

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
# why a run ended (SegTrainResult.stopped, summary.json, the model card)
STOPPED = ("epochs", "early_stopping", "time_budget")


@dataclass
class Task:
    """What a task supplies to :func:`run`."""

    model: nn.Module  # put in training mode for each epoch; saved in last.pt
    optimizer: torch.optim.Optimizer
    # (optimizer, total_steps) -> a scheduler stepped once after every optimizer step
    scheduler: Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
    steps_per_epoch: int
    batches: Callable[[int], Iterable]  # epoch (from 0) -> its batches, in order
    loss: Callable[[Any], torch.Tensor]  # a batch -> the loss to minimise
    validate: Callable[[], dict[str, float]]  # metrics on the validation set
    metric: str  # the one of them that picks the best epoch (higher is better)
    # (epoch from 1, its metrics) -> what the task's best-checkpoint file holds
    best_checkpoint: Callable[[int, dict[str, float]], dict]
    after_step: Callable[[], None] | None = None  # after each optimizer step (a weight average)
    # modules besides ``model`` whose weights training changes (an auxiliary head, a weight
    # average): saved in last.pt, so that a resumed run goes on with them
    others: dict[str, nn.Module] = field(default_factory=dict)
    on_epoch: Callable[[list[dict]], None] | None = None  # after each epoch: the history so far
    # batch norms stay in eval mode while the rest trains: fine-tuning a trained network on small
    # or differently mixed batches then keeps the statistics it was trained with (their scale and
    # shift still learn)
    frozen_norms: bool = False


@dataclass
class LoopConfig:
    epochs: int
    patience: int  # epochs without a better metric before stopping
    max_minutes: float | None = None  # hard stop, counted over all the run's sessions
    best_file: str = "best.pt"  # in the run folder


@dataclass
class LoopResult:
    # one row per epoch: epoch (from 1), step (optimizer steps so far), train_loss, lr (of the
    # epoch's last step, first parameter group), seconds (since the run began), then the metrics
    history: list[dict]
    best_epoch: int
    best_metric: float  # NaN if no epoch gave a number
    stopped: str  # one of STOPPED
    seconds: float
    step: int
    total_steps: int


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor at ``step``: a linear warm-up over ``warmup_steps`` multiplying a
    cosine decay from 1 at step 0 to 0 at ``total_steps``."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))


def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def read_last(out: Path, recipe: dict) -> dict | None:
    """The run's ``last.pt``, for resuming it; None when there is none (a fresh start).

    ``recipe``: the task's config as JSON values, less the settings of how a run is carried out
    (threads, device, time budget: ``JsonConfig.recipe``). A resumed run must have the recipe it
    started with: a change would make a run that no config describes.
    """
    path = Path(out) / LAST_CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "rng" not in state:
        raise BusdxError(f"{path} was written by an older busdx and cannot be resumed: "
                         "start the run again in a new folder")
    saved = state["config"]
    changed = [k for k in sorted(set(saved) | set(recipe)) if saved.get(k) != recipe.get(k)]
    if changed:
        what = ", ".join(f"{k}={saved.get(k)!r} (now {recipe.get(k)!r})" for k in changed)
        raise BusdxError(f"{path} was trained with {what}: resume with its recipe "
                         f"({Path(out) / CONFIG_FILE}); a changed recipe is a new run")
    return state


def run(task: Task, config: LoopConfig, out: Path, recipe: dict,
        resume: dict | None = None, process: distributed.Process | None = None,
        device: torch.device | None = None) -> LoopResult:
    """Train ``task`` for ``config.epochs``, writing checkpoints to ``out``. ``recipe`` (the
    task's config, JSON-able) is recorded in last.pt; ``resume`` is a :func:`read_last` state to
    go on from; ``process``: this process's place under torchrun (``task.batches`` then yields
    its share of each batch), on ``device``."""
    out = Path(out)
    process = process or distributed.Process()
    main = process.main
    model, optimizer = task.model, task.optimizer
    total_steps = config.epochs * task.steps_per_epoch
    scheduler = task.scheduler(optimizer, total_steps)  # built before loading: it sets the lrs

    history: list[dict] = []
    epoch0, step, seconds_before = 0, 0, 0.0
    best, best_epoch, stale = math.nan, -1, 0
    if resume is not None:
        if resume["total_steps"] != total_steps:
            raise BusdxError(f"the run planned {resume['total_steps']} steps, this one "
                             f"{total_steps}: the training set has changed")
        model.load_state_dict(resume["modules"]["model"])
        for name, module in task.others.items():
            module.load_state_dict(resume["modules"][name])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_states(resume["rng"])
        history, epoch0, step = resume["history"], resume["epoch"], resume["step"]
        best, best_epoch, stale = resume["best_metric"], resume["best_epoch"], resume["stale"]
        seconds_before = resume["seconds"]
        if main:
            log.info("resuming after epoch %d, step %d (best %s %.4f at epoch %d)", epoch0, step,
                     task.metric, best, best_epoch)
    trained = {"model": model, **{name: m for name, m in task.others.items()
                                  if any(p.requires_grad for p in m.parameters())}}
    step_loss = distributed.wrap(trained, task.loss, process, device or torch.device("cpu"))

    t0 = time.monotonic()

    def elapsed() -> float:
        return seconds_before + time.monotonic() - t0

    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    stopped = "epochs"
    for epoch in range(epoch0, config.epochs):
        if stale >= config.patience:
            stopped = "early_stopping"
            break
        if budget is not None and history:
            # epochs take about as long as each other: don't start one that would end past it;
            # rank 0's clock decides for every process
            spent = elapsed()
            if distributed.broadcast(spent + spent / len(history) > budget, process):
                stopped = "time_budget"
                break

        model.train()
        if task.frozen_norms:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        losses, lr = [], math.nan
        bar = tqdm(total=task.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   leave=False, dynamic_ncols=True, disable=None if main else True)
        for batch in itertools.islice(task.batches(epoch), task.steps_per_epoch):
            lr = optimizer.param_groups[0]["lr"]
            loss = step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if task.after_step is not None:
                task.after_step()
            step += 1
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        bar.close()
        if len(losses) != task.steps_per_epoch:
            # the schedule was planned for steps_per_epoch: fewer batches would cut it short
            raise RuntimeError(f"epoch {epoch + 1} gave {len(losses)} batches, not "
                               f"{task.steps_per_epoch}")

        metrics = distributed.broadcast(task.validate() if main else None, process)
        value = metrics[task.metric]
        train_loss = distributed.mean(float(np.mean(losses)), process)
        history.append({"epoch": epoch + 1, "step": step, "train_loss": train_loss,
                        "lr": lr, "seconds": elapsed(), **metrics})
        improved = not math.isnan(value) and (math.isnan(best) or value > best)
        if improved or best_epoch < 0:  # the first epoch is kept even without a number
            best = value if improved else best
            best_epoch, stale = epoch + 1, 0
            if main:
                save_checkpoint(out / config.best_file, task.best_checkpoint(epoch + 1, metrics))
        else:
            stale += 1
        if not main:
            continue
        save_checkpoint(out / LAST_CHECKPOINT, {
            "modules": {"model": model.state_dict(),
                        **{name: m.state_dict() for name, m in task.others.items()}},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_states(), "epoch": epoch + 1, "step": step, "total_steps": total_steps,
            "best_metric": best, "best_epoch": best_epoch, "stale": stale,
            "seconds": elapsed(), "history": history, "config": recipe,
        })
        done_here = epoch + 1 - epoch0
        eta = (time.monotonic() - t0) / done_here * (config.epochs - epoch - 1)
        log.info("epoch %d/%d, step %d/%d: train loss %.4f, %s%s; %.0f s, ETA %.0f s",
                 epoch + 1, config.epochs, step, total_steps, history[-1]["train_loss"],
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                 " (best)" if improved else "", elapsed(), eta)
        if task.on_epoch is not None:
            task.on_epoch(history)

    seconds = elapsed()
    # the other processes wait for rank 0's last checkpoint before anyone reads it
    distributed.barrier(process)
    if main:
        log.info("stopped (%s) after %d epochs, %d of %d steps, %.0f s; best %s %.4f at epoch %d",
                 stopped, len(history), step, total_steps, seconds, task.metric, best,
                 best_epoch)
    return LoopResult(history=history, best_epoch=best_epoch, best_metric=best, stopped=stopped,
                      seconds=seconds, step=step, total_steps=total_steps)
