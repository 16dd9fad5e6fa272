"""``busdx predict --ray``: a pool of Ray workers gives the rows and files of a plain run, and a
worker killed mid-run loses and duplicates nothing. Inputs listed in a CSV and given as URLs."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest

from busdx.cli.main import main
from busdx.inference.batch import BatchOptions
from tiers import unavailable


def _ray():
    try:
        import ray
    except ImportError:
        unavailable("Ray is not installed (pip install -e '.[ray]')")
    return ray

FIXTURE_IMAGES = Path(__file__).parent / "fixtures" / "busbra" / "Images"


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _same_rows(plain: list[dict], other: list[dict]) -> None:
    assert [r["path"] for r in other] == [r["path"] for r in plain]
    for a, b in zip(plain, other, strict=True):
        for key in a:
            if key == "time_ms":
                continue
            if key == "probability" and a[key]:
                assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-6)
            else:
                assert b[key] == a[key], key


@pytest.fixture(scope="module")
def ray_session():
    ray = _ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_workers_write_what_a_plain_run_writes(tmp_path, stand_in_dir):
    _ray()
    common = [str(FIXTURE_IMAGES), "--models", str(stand_in_dir)]
    assert main(["predict", *common, "--csv", str(tmp_path / "plain.csv"),
                 "--masks-dir", str(tmp_path / "plain_masks")]) == 0
    assert main(["predict", *common, "--csv", str(tmp_path / "ray.csv"),
                 "--masks-dir", str(tmp_path / "ray_masks"), "--ray", "--ray-workers", "2",
                 "--ray-batch", "3"]) == 0
    plain = _rows(tmp_path / "plain.csv")
    assert len(plain) >= 8
    _same_rows(plain, _rows(tmp_path / "ray.csv"))
    masks = sorted(p.name for p in (tmp_path / "plain_masks").iterdir())
    assert masks == sorted(p.name for p in (tmp_path / "ray_masks").iterdir())
    for name in masks:
        assert ((tmp_path / "ray_masks" / name).read_bytes()
                == (tmp_path / "plain_masks" / name).read_bytes())

    import ray

    assert not ray.is_initialized()  # the instance started for the run was stopped after it


@pytest.mark.slow
def test_a_killed_worker_is_retried_without_losing_or_repeating_rows(ray_session,
                                                                      stand_in_dir):
    from busdx.inference.batch import analyse_input
    from busdx.inference.models import Models
    from busdx.inference.ray_batch import analyse_all, make_actors

    sources = sorted(str(p) for p in FIXTURE_IMAGES.iterdir())
    options = BatchOptions()
    actors = make_actors(ray_session, 2, stand_in_dir, options)
    pids = ray_session.get([a.pid.remote() for a in actors])
    results = analyse_all(sources, stand_in_dir, options, batch_size=1, actors=actors)
    got = [next(results)]
    os.kill(pids[1], signal.SIGKILL)  # the second worker dies while it holds a batch
    got += list(results)
    got = [view for views in got for view in views]  # one view per input here
    assert [r.source for r in got] == sources  # each once, in input order
    models = Models.load(stand_in_dir)
    expected = [analyse_input(s, models, options)[0].row for s in sources]
    _same_rows(expected, [r.row for r in got])
    assert ray_session.get(actors[1].pid.remote()) != pids[1]  # Ray restarted it


def test_inputs_listed_in_a_csv_and_given_as_urls(tmp_path, stand_in_dir):
    try:
        import fsspec
    except ImportError:
        unavailable("fsspec is not installed (pip install -e '.[ray]')")
    images = sorted(FIXTURE_IMAGES.iterdir())[:3]
    listed = tmp_path / "list.csv"
    listed.write_text("patient,path\n" + "".join(f"p{i},{p}\n" for i, p in enumerate(images)))
    memory = fsspec.filesystem("memory")
    memory.pipe("/busdx-test/remote.png", images[0].read_bytes())
    out = tmp_path / "out.csv"
    assert main(["predict", "memory://busdx-test/remote.png", "memory://busdx-test/none.png",
                 "--list", str(listed), "--csv", str(out), "--masks-dir", str(tmp_path / "m"),
                 "--models", str(stand_in_dir)]) == 0
    rows = {r["path"]: r for r in _rows(out)}
    assert set(rows) == {*map(str, images), "memory://busdx-test/remote.png",
                         "memory://busdx-test/none.png"}
    remote, local = rows["memory://busdx-test/remote.png"], rows[str(images[0])]
    assert remote["error"] == "" and remote["probability"] == local["probability"]
    assert "cannot read" in rows["memory://busdx-test/none.png"]["error"]
    assert (tmp_path / "m" / "remote.png").is_file()
    # nothing named at all is a usage error, not an empty CSV; so are no workers
    assert main(["predict", "--csv", str(tmp_path / "none.csv"), "--models",
                 str(stand_in_dir)]) == 2
    for option in ("--ray-workers", "--ray-batch", "--threads"):
        assert main(["predict", str(images[0]), "--csv", str(tmp_path / "none.csv"), "--ray",
                     option, "0", "--models", str(stand_in_dir)]) == 2
