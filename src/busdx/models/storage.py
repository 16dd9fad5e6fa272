"""How an exported graph stores its weights.

``float16`` halves the file: each large float32 weight is kept as float16 and cast back to
float32 by a ``Cast`` node. ONNX Runtime folds those casts when it loads the session, so the
network still computes in float32 at the same speed; only the weights are rounded (relative
error below 2**-11). The rounding is applied before calibration, which then fits the graph
that ships.
"""

from __future__ import annotations

from pathlib import Path

from busdx.errors import BusdxError

STORAGES = ("float32", "float16")
# small tensors (biases, norms) gain nothing from halving and keep full precision
MIN_ELEMENTS = 1024


def store_weights(path: str | Path, storage: str) -> Path:
    """Rewrite the graph at ``path`` so that its weights are stored as ``storage``: float16
    behind casts, or float32 (which also undoes an earlier float16 storage)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    if storage not in STORAGES:
        raise BusdxError(f"unknown weight storage {storage!r}; choose one of {STORAGES}")
    proto = onnx.load(str(path))
    graph = proto.graph
    halves = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT16}
    if storage == "float32":
        if not halves:
            return path
        # each float16 weight back under the name its cast wrote, and the casts gone
        casts = {n.input[0]: n for n in graph.node if n.op_type == "Cast" and n.input[0] in halves}
        kept = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32),
                                        casts[t.name].output[0]) if t.name in casts else t
                for t in graph.initializer]
        nodes = [n for n in graph.node if not (n.op_type == "Cast" and n.input[0] in casts)]
    else:
        casts, kept = [], []
        for init in graph.initializer:
            if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < MIN_ELEMENTS:
                kept.append(init)
                continue
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                           f"{init.name}__float16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name],
                                          to=TensorProto.FLOAT, name=f"{init.name}__to_float32"))
        nodes = casts + list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    return path


def stored_weights(proto) -> dict:
    """Every weight of a loaded graph as float32 arrays by the name its consumers read, whether
    stored as float32 or as float16 behind a ``Cast``."""
    import numpy as np
    from onnx import numpy_helper

    weights = {t.name: np.array(numpy_helper.to_array(t)) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Cast" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]].astype(np.float32)
    return weights


def weight_storage(path: str | Path) -> str:
    """``float16`` when the graph at ``path`` keeps any weight as float16, else ``float32``."""
    import onnx
    from onnx import TensorProto

    proto = onnx.load(str(path))
    halves = any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer)
    return "float16" if halves else "float32"
