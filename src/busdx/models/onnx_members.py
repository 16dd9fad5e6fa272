"""Segmenter ensembles assembled from exported ONNX graphs.

A bundled ensemble graph is the only copy of a member whose checkpoint is gone (run folders are
never committed), so a new ensemble can take that member from the graph itself: its sub-graph,
from the shared ``image`` input to the member's own logits, is cut out and averaged with other
members. The averaging is the same as :class:`busdx.models.segmentation.SegmenterEnsemble`'s
(mean of the logits), so a composed graph computes what a torch export of the same networks would.
"""

from __future__ import annotations

import copy

import onnx
from onnx import TensorProto, helper

from busdx.errors import BusdxError
from busdx.models.contract import INPUT_NAME, SEGMENTER_OUTPUT


def member_outputs(model: onnx.ModelProto) -> list[str]:
    """The logits tensor of each member of an ensemble graph, in member order; a single network
    is one member whose logits are the graph's output."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    final = producer.get(SEGMENTER_OUTPUT)
    if final is None:
        raise BusdxError(f"the graph has no {SEGMENTER_OUTPUT!r} output")
    if final.op_type != "ReduceMean":  # SegmenterEnsemble ends in stack (unsqueeze, concat), mean
        return [SEGMENTER_OUTPUT]
    concat = producer.get(final.input[0])
    if concat is None or concat.op_type != "Concat":
        return [SEGMENTER_OUTPUT]
    outputs = []
    for name in concat.input:
        unsqueeze = producer.get(name)
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
            raise BusdxError("the ensemble graph's members could not be told apart")
        outputs.append(unsqueeze.input[0])
    return outputs


def extract_member(model: onnx.ModelProto, index: int) -> onnx.ModelProto:
    """Member ``index`` of an ensemble graph as a graph of its own (input ``image``, output
    ``mask_logits``, dynamic batch)."""
    outputs = member_outputs(model)
    if not 0 <= index < len(outputs):
        raise BusdxError(f"the graph has {len(outputs)} member(s); there is no member {index}")
    if outputs[index] == SEGMENTER_OUTPUT:
        return model
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    needed, stack, seen = set(), [outputs[index]], set()
    while stack:  # every node the member's logits depend on (the shared normalisation included)
        name = stack.pop()
        node = producer.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
    # copies, in graph order (a topological order), so that renaming leaves ``model`` untouched
    nodes = [copy.deepcopy(n) for n in graph.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    for node in nodes:
        node.output[:] = [SEGMENTER_OUTPUT if o == outputs[index] else o for o in node.output]
    sub_graph = helper.make_graph(
        nodes, f"segmenter_member_{index}",
        [i for i in graph.input if i.name == INPUT_NAME], [_logits_info()],
        [t for t in graph.initializer if t.name in used],
    )
    sub = helper.make_model(sub_graph, opset_imports=list(model.opset_import),
                            producer_name="busdx")
    sub.ir_version = model.ir_version
    onnx.checker.check_model(sub)
    return sub


def average_members(models: list[onnx.ModelProto]) -> onnx.ModelProto:
    """One graph whose output is the mean of the members' logits (each member: input ``image``,
    output ``mask_logits``)."""
    if not models:
        raise BusdxError("no members to average")
    if len(models) == 1:
        return models[0]
    shapes = {_input_shape(m) for m in models}
    if len(shapes) != 1:
        raise BusdxError(f"members take inputs of different shapes: {sorted(shapes)}")
    opsets = {o.version for m in models for o in m.opset_import if o.domain in ("", "ai.onnx")}
    nodes, initializers, stacked = [], [], []
    for i, model in enumerate(models):
        prefixed = onnx.compose.add_prefix(model, f"m{i}/", rename_inputs=False)
        nodes.extend(prefixed.graph.node)
        initializers.extend(prefixed.graph.initializer)
        stacked.append(f"m{i}/{SEGMENTER_OUTPUT}")
    axes = helper.make_tensor("ensemble/axes", TensorProto.INT64, [1], [0])
    initializers.append(axes)
    for name in stacked:
        nodes.append(helper.make_node("Unsqueeze", [name, "ensemble/axes"], [f"{name}/stacked"]))
    nodes.append(helper.make_node("Concat", [f"{n}/stacked" for n in stacked], ["ensemble/all"],
                                  axis=0))
    if len(opsets) != 1:
        raise BusdxError(f"members were exported with different opsets: {sorted(opsets)}")
    opset = opsets.pop()
    if opset >= 18:  # ReduceMean's axes became an input in opset 18
        nodes.append(helper.make_node("ReduceMean", ["ensemble/all", "ensemble/axes"],
                                      [SEGMENTER_OUTPUT], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", ["ensemble/all"], [SEGMENTER_OUTPUT],
                                      axes=[0], keepdims=0))
    graph = helper.make_graph(nodes, "segmenter_ensemble", list(models[0].graph.input),
                              [_logits_info()], initializers)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                            producer_name="busdx")
    out.ir_version = max(m.ir_version for m in models)
    onnx.checker.check_model(out)
    return out


def _input_shape(model: onnx.ModelProto) -> tuple:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else "batch" for d in dims)


def _logits_info() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(SEGMENTER_OUTPUT, TensorProto.FLOAT,
                                         ["batch", 1, None, None])
