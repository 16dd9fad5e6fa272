"""Training under torchrun: two CPU processes with gloo against one process with the same
global batch.

Stated tolerance. The two runs make the same optimizer steps on the same samples with the same
augmentations and learning rates, but on CPUs PyTorch has no synchronised batch norm, so each
of the two processes normalises over its half of the batch where a single process normalises
over the whole. That alone separates them: their mean training loss must agree within 2% each
epoch and their validation loss within 10%. The learning rates must be the same, and the two
processes must hold the same weights to the bit (DistributedDataParallel averaged their
gradients).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from busdx.training import distributed
from busdx.training.distributed import Process

DRIVER = """
import json, sys, torch
from pathlib import Path
from busdx.models.segmentation import SegmenterConfig
from busdx.training.segmentation import SegTrainConfig, train_segmenter

kw = json.loads(sys.argv[1])
kw["model"] = SegmenterConfig(**kw["model"])
result = train_segmenter(SegTrainConfig(**kw))
state = torch.load(Path(kw["out"]) / "last.pt", map_location="cpu", weights_only=False)
torch.save(state["modules"]["model"], Path(kw["out"]) / f"rank{result.rank}.pt")
"""


def test_shards_make_up_each_global_batch_in_order():
    order = np.random.default_rng(0).permutation(23)
    batch = 4
    shards = [order[distributed.shard(order, batch, Process(rank, 2, rank))] for rank in (0, 1)]
    per = distributed.per_process_batch(batch, Process(0, 2, 0))
    for step in range(len(order) // batch):
        together = np.concatenate([s[step * per:(step + 1) * per] for s in shards])
        assert sorted(together) == sorted(order[step * batch:(step + 1) * batch])
    assert sum(len(s) for s in shards) == len(order) // batch * batch
    with pytest.raises(Exception, match="does not split evenly"):
        distributed.per_process_batch(5, Process(0, 2, 0))


def test_one_process_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    process = Process.from_environment()
    assert process == Process() and process.main and not process.distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(Exception, match="makes no sense"):
        Process.from_environment()


def _run(tmp_path: Path, name: str, fixtures_root: Path, processes: int, **kw) -> Path:
    out = tmp_path / name
    config = dict(data=str(fixtures_root), out=str(out), epochs=2, batch_size=4, limit_train=8,
                  limit_val=4, size=64, threads=1, cache_dir=str(tmp_path / "cache"),
                  warmup_steps=1, model={"pretrained": False}, **kw)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, str(driver), json.dumps(config)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={processes}", str(driver), json.dumps(config)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().double() for k, v in state.items()
                      if v.is_floating_point() and "running" not in k])


@pytest.fixture(scope="module")
def pair_run(fixtures_root, tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("ddp"), "pair", fixtures_root, 2)


@pytest.mark.slow
def test_two_gloo_processes_train_as_one_process_does(fixtures_root, tmp_path, pair_run):
    single = _run(tmp_path, "single", fixtures_root, 1)
    pair = pair_run
    w1 = _flat(torch.load(single / "rank0.pt"))
    w2 = [_flat(torch.load(pair / f"rank{r}.pt")) for r in (0, 1)]
    assert torch.equal(w2[0], w2[1])  # the gradients were averaged across the processes
    h1 = json.loads((single / "history.json").read_text())
    h2 = json.loads((pair / "history.json").read_text())
    assert h2["lr"] == h1["lr"]
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=0.02)
    assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=0.10)
    assert not torch.equal(w1, w2[0])  # it did run apart from the single process

    # rank 0 alone wrote the run, with the same record a single process writes
    assert h2["epoch"] == [1, 2]
    summary = json.loads((pair / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    assert not list(pair.glob(".*.tmp"))


@pytest.mark.slow
def test_a_run_under_torchrun_resumes_where_it_stopped(fixtures_root, tmp_path, pair_run):
    cut = _run(tmp_path, "cut", fixtures_root, 2, max_minutes=1e-9)
    assert json.loads((cut / "summary.json").read_text())["epochs_run"] == 1
    resumed = _run(tmp_path, "cut", fixtures_root, 2, resume=True)
    history = json.loads((resumed / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    # as if it had never stopped: the uninterrupted run's weights
    a = _flat(torch.load(pair_run / "rank0.pt"))
    b = _flat(torch.load(resumed / "rank0.pt"))
    assert torch.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_classifier_trains_under_torchrun_and_rank_0_records_it(fixtures_root, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "-m", "busdx", "train", "classification",
               "--data", str(fixtures_root), "--out", str(out), "--epochs", "2",
               "--max-batches", "1", "--batch-size", "4", "--cache", str(tmp_path / "cache"),
               "--test-fold", "1", "--threads", "1"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "classifier.pt").is_file() and (out / "calibration.json").is_file()
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert json.loads((out / "training.json").read_text())["config"]["batch_size"] == 4
    assert not list(out.glob(".*.tmp"))
