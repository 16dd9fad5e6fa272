"""``busdx predict --ray``: the batch analysed by a pool of Ray actors.

Each actor loads the ONNX sessions once and analyses batches of inputs with
:func:`busdx.inference.batch.analyse_input`, the function the plain loop calls, so the rows are
the same. Results come back in input order (``ActorPool.map``), as they are done, and the
command writes them as it does without Ray. An actor that dies (its process killed, its node
lost) is restarted by Ray and its batch run again (``max_restarts``, ``max_task_retries``):
since workers return results instead of writing them, a retried batch is neither lost nor
written twice.

Without an address, a Ray instance is started on this machine for the run and stopped after
it; with one (``ray://host:10001`` or ``auto``), the run joins that cluster, whose workers must
see the models folder and the inputs at the same paths (or read the inputs from URLs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from busdx.errors import BusdxError
from busdx.inference.batch import BatchOptions, ViewResult, analyse_input

log = logging.getLogger(__name__)


class Analyser:
    """A Ray actor's state: the loaded models, kept for every batch it is given."""

    def __init__(self, models_dir: str | None, options: BatchOptions, threads: int):
        from busdx.inference.models import Models

        # as many ONNX Runtime threads as the CPUs Ray gave the actor, so a node is not
        # overcommitted
        self.models = Models.load(models_dir, threads=threads)
        self.options = options

    def analyse(self, sources: Sequence[str]) -> list[list[ViewResult]]:
        return [analyse_input(source, self.models, self.options) for source in sources]

    def pid(self) -> int:
        return os.getpid()


def batches(sources: Sequence[str], size: int) -> list[list[str]]:
    return [list(sources[i:i + size]) for i in range(0, len(sources), size)]


def start(address: str | None):
    """Connect to ``address``'s cluster, or start a local Ray instance for the run; ``ray``
    and whether this call started it (and so should shut it down)."""
    try:
        import ray
    except ImportError as err:
        raise BusdxError("--ray needs Ray: pip install 'busdx[ray]'") from err
    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise BusdxError(f"cannot start or join Ray{f' at {address}' if address else ''}: "
                             f"{err}") from err
    return ray, started


def make_actors(ray, workers: int | None, models_dir: Path | None, options: BatchOptions,
                threads: int = 1) -> list:
    """``workers`` actors (default: one per CPU the cluster offers), each restarted by Ray if
    it dies, its unfinished batch then run again."""
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    remote = ray.remote(num_cpus=threads, max_restarts=-1, max_task_retries=-1)(Analyser)
    models = str(models_dir) if models_dir is not None else None
    return [remote.remote(models, options, threads) for _ in range(workers)]


def analyse_all(sources: Sequence[str], models_dir: Path | None, options: BatchOptions,
                address: str | None = None, workers: int | None = None,
                batch_size: int = 8, actors: list | None = None, threads: int = 1
                ) -> Iterator[list[ViewResult]]:
    """The results of every input, in input order, as the actors finish them; each actor
    holds ``threads`` CPUs and gives ONNX Runtime as many threads."""
    ray, started = start(address)
    from ray.util import ActorPool

    owned = actors is None
    if owned:
        actors = make_actors(ray, workers, models_dir, options, threads)
    # no larger than an even share, so that a small run keeps every worker busy
    size = max(1, min(batch_size, -(-len(sources) // len(actors))))
    log.info("analysing %d inputs on %d Ray workers, %d per batch", len(sources), len(actors),
             size)
    pool = ActorPool(actors)
    try:
        for results in pool.map(lambda actor, batch: actor.analyse.remote(batch),
                                batches(sources, size)):
            yield from results
    finally:
        if owned:
            for actor in actors:
                ray.kill(actor)
        if started:
            ray.shutdown()
