"""Networks taken back out of exported ONNX graphs: segmenter ensemble members, classifiers.

A bundled ensemble graph is the only copy of a member whose checkpoint is gone (run folders are
never committed), so a new ensemble can take that member from the graph itself: its sub-graph,
from the shared ``image`` input to the member's own logits, is cut out and averaged with other
members. The averaging is the same as :class:`busdx.models.segmentation.SegmenterEnsemble`'s
(mean of the logits), so a composed graph computes what a torch export of the same networks would.

A classifier graph is likewise turned back into a torch network (:func:`recover_classifier`), so
that calibration, mirror options and export can run again without the training run's checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

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


def load_folded(pairs, convs, weights: dict) -> None:
    """Load exported convolutions into (convolution, batch norm) pairs in the folded form the
    exporter left them in: each convolution takes the folded weight, and its batch norm passes
    the folded bias through (mean 0, variance 1 - eps, scale 1)."""
    import torch

    with torch.no_grad():
        for (conv, bn), node in zip(pairs, convs, strict=True):
            conv.weight.copy_(torch.from_numpy(weights[node.input[1]]))
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(weights[node.input[2]]))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)


def recover_classifier(graph_path, section: dict) -> tuple[Any, dict]:
    """An EfficientNet-Lite classifier rebuilt from its exported graph, for when the checkpoint
    is gone: the model (eval mode) and a checkpoint dict that :func:`load_checkpoint` reads.

    The exporter folded each batch norm into its convolution, so the network comes back in that
    folded form: each convolution holds the folded weight and its batch norm passes the folded
    bias through (mean 0, variance 1 - eps, scale 1). It computes what the graph computes, which
    is what calibration, export and benchmarks need, but its batch norms no longer hold running
    statistics: it is not a starting point for more training. ``section`` is the card's
    classifier section that describes the graph (architecture, views, Platt offset)."""
    import numpy as np
    import torch

    from busdx.models.classification import (
        ClassifierSpec,
        build_classifier,
        conv_bn_pairs,
        export_module,
    )
    from busdx.models.contract import input_views
    from busdx.models.storage import stored_weights

    arch = section.get("arch", "")
    if arch not in ("lite0", "lite1", "lite2") or section.get("ensemble"):
        raise BusdxError(f"only a single EfficientNet-Lite classifier can be recovered, not {arch!r}")
    config = dict(section.get("training", {}).get("config") or {})
    spec = ClassifierSpec(arch=arch, dropout=float(config.get("dropout", 0.3)),
                          weights=section.get("weights", "imagenet"),
                          views=input_views(section.get("input", "crop")))
    model = build_classifier(spec, pretrained=False).eval()
    if section.get("tta", "none") != "none":
        raise BusdxError("a graph with mirror averaging baked in cannot be recovered")
    proto = onnx.load(str(graph_path))
    weights = stored_weights(proto)  # float16-stored graphs too
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    pairs = conv_bn_pairs(model.backbone)
    if len(pairs) != len(convs):
        raise BusdxError(f"{graph_path} does not match a {arch} classifier's layers")
    for (conv, bn), node in zip(pairs, convs, strict=True):
        w, b = weights[node.input[1]], weights[node.input[2]]
        if tuple(w.shape) != tuple(conv.weight.shape) or b.shape != (bn.num_features,):
            raise BusdxError(f"{graph_path}: layer shapes differ from a {arch} classifier's")
    load_folded(pairs, convs, weights)
    with torch.no_grad():
        offset = float(section.get("logit_offset", 0.0))
        model.fc.weight.copy_(torch.from_numpy(weights["model.fc.weight"]))
        # the graph's bias carries Platt's intercept; the checkpoint holds the network's own
        model.fc.bias.copy_(torch.from_numpy(weights["model.fc.bias"]) - offset)
    size = int(config.get("size", section.get("crop", {}).get("size", 224)))
    probe = torch.rand(2, spec.views, size, size, generator=torch.Generator().manual_seed(0))
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: probe.numpy()})
    with torch.no_grad():
        got = export_module(model, logit_offset=offset)(probe)
    diff = max(float(np.abs(g.numpy() - e).max()) for g, e in zip(got, expected, strict=True))
    if diff > 1e-3:
        raise BusdxError(f"the recovered network differs from {graph_path} by {diff:.2e}")
    checkpoint = {
        "state_dict": model.state_dict(), "spec": {**spec.__dict__}, "config": config,
        "epoch": section.get("calibration", {}).get("checkpoint_epoch"),
        "val_auc": section.get("calibration_training", {}).get("val_auc"),
        "recovered_from": {"graph": str(graph_path), "max_abs_diff": diff,
                           "checkpoint": (section.get("checkpoints") or [None])[0],
                           "note": "batch norms folded into the convolutions: for inference, "
                                   "calibration and export, not for more training"},
    }
    return model, checkpoint


def graph_input_size(graph, default: int = 224) -> int:
    """The square input size a segmenter graph (a path or an onnx ModelProto) was exported at;
    ``default`` where its height and width are not fixed (a U-Net takes any multiple of 32)."""
    proto = graph if isinstance(graph, onnx.ModelProto) else onnx.load(
        str(graph), load_external_data=False)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]]
    if len(dims) != 2 or not all(dims):
        return default
    if dims[0] != dims[1]:
        raise BusdxError(f"the segmenter graph's input is {dims[0]} x {dims[1]}, not square")
    return dims[0]


def recover_segmenter(graph_path, member: int = 0, encoder: str | None = None,
                      decoder_channels: tuple[int, ...] | None = None) -> tuple[Any, Any]:
    """Member ``member`` of a segmenter graph rebuilt as a torch U-Net (eval mode), with its
    :class:`~busdx.models.segmentation.SegmenterConfig`; a starting point for fine-tuning once
    :func:`restore_batch_norm_statistics` has given its batch norms statistics again.

    Without ``encoder``, each EfficientNet-Lite encoder is tried and the one whose layer shapes
    match the graph's is taken. Like a recovered classifier, the network comes back with its
    batch norms folded into the convolutions; the rebuilt network's output is checked against
    the graph's."""
    import numpy as np
    import torch

    from busdx.models.classification import conv_bn_pairs
    from busdx.models.segmentation import SegmenterConfig, SegmenterExport, build_segmenter
    from busdx.models.storage import stored_weights

    proto = extract_member(onnx.load(str(graph_path)), member)
    weights = stored_weights(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    head = convs[-1]
    channels = decoder_channels or SegmenterConfig().decoder_channels
    candidates = [encoder] if encoder else [f"tf_efficientnet_lite{k}" for k in range(5)]
    for name in candidates:
        config = SegmenterConfig(encoder=name, pretrained=False, decoder_channels=channels)
        net = build_segmenter(config).eval()
        pairs = conv_bn_pairs(net.encoder) + conv_bn_pairs(net.decoder)
        shapes = [tuple(c.weight.shape) for c, _ in pairs]
        if len(pairs) + 1 == len(convs) and shapes == [
                tuple(weights[n.input[1]].shape) for n in convs[:-1]]:
            break
    else:
        raise BusdxError(f"member {member} of {graph_path} matches no EfficientNet-Lite U-Net "
                         f"with decoder channels {list(channels)}")
    load_folded(pairs, convs[:-1], weights)
    with torch.no_grad():
        out_conv = net.segmentation_head[0]
        out_conv.weight.copy_(torch.from_numpy(weights[head.input[1]]))
        out_conv.bias.copy_(torch.from_numpy(weights[head.input[2]]))
    size = graph_input_size(proto)
    probe = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {INPUT_NAME: probe.numpy()})[0]
    with torch.no_grad():
        got = SegmenterExport(net).eval()(probe).numpy()
    diff = float(np.abs(got - expected).max())
    if diff > 1e-3:
        raise BusdxError(f"the recovered member differs from {graph_path} by {diff:.2e}")
    return net, config


def restore_batch_norm_statistics(net, batches) -> Any:
    """Give a network whose batch norms were folded into its convolutions real statistics again,
    without changing what it computes in eval mode, so that it can be trained further.

    Each batch norm's input statistics are measured over ``batches`` (network inputs); the norm
    then holds them, and its scale and shift are set so that (x - mean) / std * scale + shift is
    still x + bias. Training mode then normalises by batch statistics close to those, instead of
    by the meaningless unit statistics of the folded form."""
    import torch

    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    sums = {id(bn): [0.0, 0.0, 0] for bn in norms}

    def measure(module, inputs, _output):
        x = inputs[0].detach().double()
        acc = sums[id(module)]
        acc[0] = acc[0] + x.sum(dim=(0, 2, 3))
        acc[1] = acc[1] + (x * x).sum(dim=(0, 2, 3))
        acc[2] += x.numel() // x.shape[1]

    hooks = [bn.register_forward_hook(measure) for bn in norms]
    net.eval()
    try:
        with torch.no_grad():
            for x in batches:
                net(x)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        for bn in norms:
            total, squares, n = sums[id(bn)]
            if not n:
                raise BusdxError("no batch reached every batch norm")
            mean = total / n
            var = (squares / n - mean * mean).clamp(min=0)
            std = torch.sqrt(var + bn.eps)
            bn.bias.add_(mean.float())  # x + b == (x - mean) / std * std + (b + mean)
            bn.weight.copy_(std.float())
            bn.running_mean.copy_(mean.float())
            bn.running_var.copy_(var.float())
    return net


def recover_classifier_members(graph_path, members: list[dict], logit_offset: float = 0.0,
                               tta: str = "none") -> list[dict]:
    """The networks of a classifier ensemble graph (:class:`ClassifierEnsemble`, exported with
    ``tta`` and ``logit_offset``), each as a checkpoint dict that :func:`load_checkpoint` reads.

    ``members``: the card's record of each member, in the ensemble's order (``arch``,
    ``config`` with its ``input``, dropout and size). Each member's convolutions follow the
    previous member's in the graph; the shared linear head is cut back into the members'
    heads (each block times the number of members). The members' own biases are not in the
    graph, only their mean, so each member gets that mean: a calibration refit absorbs it, and
    no ranking depends on it. The torch ensemble rebuilt from the members is checked against the
    graph's output."""
    import numpy as np
    import torch

    from busdx.models.classification import (
        ClassifierEnsemble,
        ClassifierSpec,
        build_classifier,
        conv_bn_pairs,
        export_module,
    )
    from busdx.models.contract import input_views
    from busdx.models.storage import stored_weights

    proto = onnx.load(str(graph_path))
    weights = stored_weights(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    nets, specs, start = [], [], 0
    for record in members:
        config = dict(record.get("config") or {})
        spec = ClassifierSpec(arch=record["arch"], dropout=float(config.get("dropout", 0.3)),
                              views=input_views(config.get("input", "crop")))
        net = build_classifier(spec, pretrained=False).eval()
        pairs = conv_bn_pairs(net.backbone)
        mine = convs[start:start + len(pairs)]
        start += len(pairs)
        if len(mine) != len(pairs) or any(
                tuple(weights[n.input[1]].shape) != tuple(c.weight.shape)
                for (c, _), n in zip(pairs, mine, strict=True)):
            raise BusdxError(f"{graph_path} does not hold a {spec.arch} member where expected")
        load_folded(pairs, mine, weights)
        nets.append(net)
        specs.append(spec)
    if start != len(convs):
        raise BusdxError(f"{graph_path} has {len(convs) - start} convolutions no member claims")
    head_w = torch.from_numpy(weights["model.fc.weight"]).reshape(1, -1)
    bias = float(weights["model.fc.bias"].reshape(-1)[0]) - logit_offset
    views = max(n.views for n in nets)
    k = len(nets)
    offset = 0
    blocks: list[list[torch.Tensor]] = [[] for _ in nets]
    for v in range(views):  # the ensemble's pooled layout: view 0 of every member, then view 1
        for i, net in enumerate(nets):
            c = net.num_features
            block = head_w[:, offset:offset + c] * k
            offset += c
            if net.views == views or v == 0:
                blocks[i].append(block)
    with torch.no_grad():
        for net, parts in zip(nets, blocks, strict=True):
            net.fc.weight.copy_(torch.cat(parts, dim=1))
            net.fc.bias.fill_(bias)
    size = int((members[0].get("config") or {}).get("size", 224))
    probe = torch.rand(2, views, size, size, generator=torch.Generator().manual_seed(0))
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: probe.numpy()})
    model = nets[0] if k == 1 else ClassifierEnsemble(nets).eval()
    with torch.no_grad():
        got = export_module(model, tta=tta, logit_offset=logit_offset)(probe)
    diff = max(float(np.abs(g.numpy() - e).max()) for g, e in zip(got, expected, strict=True))
    if diff > 1e-3:
        raise BusdxError(f"the recovered members differ from {graph_path} by {diff:.2e}")
    out = []
    for net, spec, record in zip(nets, specs, members, strict=True):
        out.append({
            "state_dict": net.state_dict(), "spec": {**spec.__dict__},
            "config": dict(record.get("config") or {}), "epoch": record.get("epoch"),
            "recovered_from": {"graph": str(graph_path), "ensemble_max_abs_diff": diff,
                               "checkpoint": record.get("checkpoint"),
                               "note": "a member of an ensemble graph: batch norms folded; "
                                       "its bias is the ensemble's mean bias"},
        })
    return out
