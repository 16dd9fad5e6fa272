"""A teacher for distillation: an exported graph whose outputs a network in training learns to
match beside the labels.

The product's latency budget allows one network per task, while ensembles of several score
better; a single network taught by the ensemble's outputs (on the same augmented inputs it
trains on) can keep part of that gain at one network's cost. The teacher is read through ONNX
Runtime, so any graph ``busdx export`` or ``busdx release`` wrote can teach, including a bundled
ensemble whose training checkpoints are gone.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from busdx.errors import BusdxError
from busdx.release import RELEASE_FILE, file_sha256


class Teacher:
    """One output of an exported graph, computed for training batches.

    ``graph`` takes the batch as the network in training sees it before its normalisation
    (images in [0, 1], the graphs normalise inside); ``output`` names the graph output to learn
    from. On a CUDA machine with ONNX Runtime's CUDA provider the teacher runs there."""

    def __init__(self, graph: str | Path, output: str, threads: int = 1):
        import onnxruntime as ort

        path = Path(graph)
        if not path.is_file():
            raise BusdxError(f"--teacher {graph}: no such graph")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in available]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own types for unreadable graphs
            raise BusdxError(f"--teacher {graph}: not a graph ONNX Runtime can load ({err})")\
                from err
        outputs = [o.name for o in self.session.get_outputs()]
        if output not in outputs:
            raise BusdxError(f"--teacher {graph} has no output {output!r} (it has "
                             f"{', '.join(outputs)}): give a graph of the task being trained")
        self.graph, self.output = path, output
        self.input = self.session.get_inputs()[0]

    def check_input(self, channels: int, size: int) -> None:
        """Refuse, before any training, a teacher that cannot read the batches: another number
        of input channels (views) or a fixed input size other than ``size``."""
        shape = list(self.input.shape)
        if len(shape) != 4:
            raise BusdxError(f"--teacher {self.graph} takes {len(shape)}-d input, not images")
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if fixed[0] is not None and fixed[0] != channels:
            raise BusdxError(f"--teacher {self.graph} reads {fixed[0]} view(s) per image and the "
                             f"network in training {channels}: teach it with a graph of the "
                             "same input")
        if any(d is not None and d != size for d in fixed[1:]):
            raise BusdxError(f"--teacher {self.graph} takes {fixed[1]}x{fixed[2]} inputs, the "
                             f"network in training {size}x{size}")

    def describe(self) -> dict:
        """What taught the run, for its records (:func:`teacher_record`)."""
        return teacher_record(self.graph, self.output)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's output for batch ``x`` (as the training loop holds it, on its device)."""
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        out = self.session.run([self.output], {self.input.name: feed})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the student's logits against the teacher's probabilities: the
    two-class form of matching the teacher's distribution (its minimum is where the student's
    probability equals the teacher's)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(
        student_logits, torch.sigmoid(teacher_logits.reshape(student_logits.shape)))


def teacher_record(graph: str | Path, output: str) -> dict:
    """What taught a run, for its records, read from the file alone (no session is opened): the
    graph's path, its SHA-256 (the path of a bundled graph names another network after the next
    release) and, when the graph sits in a release folder, that release's version."""
    graph = Path(graph)
    described = {"graph": str(graph), "sha256": file_sha256(graph), "output": output}
    card = graph.parent / RELEASE_FILE
    # an unreadable card leaves the hash to say which graph it was
    with contextlib.suppress(OSError, ValueError):
        if card.is_file():
            described["release"] = json.loads(card.read_text(encoding="utf-8")).get("version")
    return described
