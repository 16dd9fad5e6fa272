"""Adding a fitted head to an exported graph as an extra output (the appearance and presence
checks of busdx.evaluation), so that refitting it is repeatable byte for byte.

A refit replaces the head's nodes, weights and output where the previous fit put them: the same
fit then gives the same file, hence the same release version, whatever else was added since.
"""

from __future__ import annotations


def with_head(graph, prefix: str, output, nodes: list, initializers: list):
    """A copy of ``graph`` (an onnx ModelProto) with the head: ``nodes`` and ``initializers``
    (every name they make starts with ``prefix``, but the final output) and ``output`` (a
    ValueInfoProto). A head already there under ``prefix`` and ``output.name`` is replaced in
    place."""
    import onnx

    graph = onnx.ModelProto.FromString(graph.SerializeToString())
    g = graph.graph

    def ours_node(node) -> bool:
        return any(o.startswith(prefix) or o == output.name for o in node.output)

    def splice(container, ours, new) -> None:
        items = list(container)
        at = next((i for i, item in enumerate(items) if ours(item)), len(items))
        kept = [item for item in items if not ours(item)]
        del container[:]
        container.extend(kept[:at] + list(new) + kept[at:])

    splice(g.node, ours_node, nodes)
    splice(g.initializer, lambda t: t.name.startswith(prefix), initializers)
    splice(g.output, lambda o: o.name == output.name, [output])
    onnx.checker.check_model(graph)
    return graph
