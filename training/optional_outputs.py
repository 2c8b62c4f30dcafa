"""Make some outputs of an exported graph optional: computed only when a boolean input asks for them.

onnxruntime computes every node of a graph whatever outputs a caller requests, so an output that
most calls do not need (the heatmap; the reconstruction, when D judges the input) still costs its full
price. Here each such output gets an ONNX ``If`` on its own scalar ``bool`` input: the nodes only that
output needs move into the ``then`` branch; the ``else`` branch yields an empty tensor (batch
dimension 0) of the same rank. Nodes the always-computed outputs need stay in the main graph, as do
nodes two optional outputs share, so no node is computed twice and the other outputs are unchanged.

Each branch carries its own copy of the weights it uses. onnxruntime treats a weight a branch reads
from the outer graph as a run-time value, not a constant, so it cannot pre-pack it: measured on the
three-member ensemble, that made the map ~25 % slower than before gating; with branch-local copies
the gated graph is as fast as the plain one and bit-identical to it. The price is file size: weights
used by both the score and the map (the discriminators) are stored twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COMPUTED = "__computed"
THEN = "__then"
SKIPPED = "__skipped"


def gate_outputs(model: onnx.ModelProto, flags: Mapping[str, str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs named in ``flags`` are computed only when the scalar bool
    input ``flags[output]`` is true; when it is false they come back with a batch dimension of 0."""
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    unknown = set(flags) - set(outputs)
    if unknown:
        raise ValueError(f"no graph outputs named {sorted(unknown)}")
    subgraphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if any(a.type in subgraphs for node in graph.node for a in node.attribute):
        raise ValueError("the graph already has control flow; gating it is not supported")
    nodes = [_renamed(node, flags) for node in graph.node]
    producer = {value: index for index, node in enumerate(nodes) for value in node.output}
    missing = [name for name in flags if name + COMPUTED not in producer]
    if missing:
        raise ValueError(f"outputs {missing} are graph inputs or initializers; nothing to gate")

    always = _ancestors(nodes, producer, [name for name in outputs if name not in flags])
    own = {name: _ancestors(nodes, producer, [name + COMPUTED]) - always for name in flags}
    shared = {i for a in own for b in own if a < b for i in own[a] & own[b]}
    always |= shared
    moved = {value for name in flags for i in own[name] - shared for value in nodes[i].output}

    gated = onnx.ModelProto()
    gated.CopyFrom(model)
    main = gated.graph
    del main.node[:]
    main.node.extend(nodes[i] for i in sorted(always))
    kept_info = [v for v in graph.value_info if v.name not in moved and v.name not in flags]
    del main.value_info[:]
    main.value_info.extend(kept_info)
    branches = {name: [nodes[i] for i in sorted(own[name] - shared)] for name in flags}
    weights = {w.name: w for w in graph.initializer}
    used_by_main = {v for node in main.node for v in node.input}
    for name, flag in flags.items():
        main.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
        local = _local_weights(branches[name], weights, used_by_main, suffix=f"__{name}")
        main.node.append(_if_node(outputs[name], flag, branches[name], local))
    del main.initializer[:]
    main.initializer.extend(w for w in graph.initializer if w.name in used_by_main)
    return gated


def _renamed(node: onnx.NodeProto, flags: Mapping[str, str]) -> onnx.NodeProto:
    """The node with every gated output's value renamed ``<name>__computed``: the ``If`` node takes
    over the public name."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[:] = [v + COMPUTED if v in flags else v for v in node.input]
    copy.output[:] = [v + COMPUTED if v in flags else v for v in node.output]
    return copy


def _ancestors(nodes: list[onnx.NodeProto], producer: Mapping[str, int], values: Iterable[str]) -> set[int]:
    """Indices of the nodes that ``values`` depend on."""
    seen: set[int] = set()
    stack = [producer[v] for v in values if v in producer]
    while stack:
        index = stack.pop()
        if index not in seen:
            seen.add(index)
            stack.extend(producer[v] for v in nodes[index].input if v in producer)
    return seen


def _local_weights(
    branch: list[onnx.NodeProto], weights: Mapping[str, onnx.TensorProto], shared: set[str], suffix: str
) -> list[onnx.TensorProto]:
    """Copies of the weights ``branch`` reads, for the branch itself; a weight the main graph also
    reads is copied under a new name (ONNX forbids a branch to redefine an outer name)."""
    names = {v for node in branch for v in node.input if v in weights}
    renamed = {name: name + suffix if name in shared else name for name in names}
    for node in branch:
        node.input[:] = [renamed.get(v, v) for v in node.input]
    local = []
    for name in sorted(names):
        copy = onnx.TensorProto()
        copy.CopyFrom(weights[name])
        copy.name = renamed[name]
        local.append(copy)
    return local


def _if_node(
    output: onnx.ValueInfoProto,
    flag: str,
    branch: list[onnx.NodeProto],
    weights: list[onnx.TensorProto],
) -> onnx.NodeProto:
    """``If(flag)``: then = the output's own nodes and weights, else = an empty tensor of the
    output's rank."""
    name = output.name
    elem_type = output.type.tensor_type.elem_type
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in output.type.tensor_type.shape.dim]
    empty = np.zeros([0, *dims[1:]], dtype=helper.tensor_dtype_to_np_dtype(elem_type))
    then_branch = helper.make_graph(
        [*branch, helper.make_node("Identity", [name + COMPUTED], [name + THEN])],
        f"{name}_then",
        [],
        [helper.make_tensor_value_info(name + THEN, elem_type, None)],
        initializer=weights,
    )
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], [name + SKIPPED], value=numpy_helper.from_array(empty))],
        f"{name}_else",
        [],
        [helper.make_tensor_value_info(name + SKIPPED, elem_type, None)],
    )
    return helper.make_node(
        "If", [flag], [name], name=f"{name}_if", then_branch=then_branch, else_branch=else_branch
    )
