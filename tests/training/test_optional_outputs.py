"""Optional outputs: a gated graph computes the same values as the plain one, and nothing it was told
to skip. Hand-built ONNX graphs keep each case small and exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from training.optional_outputs import gate_outputs

FLAGS = {"heavy": "with_heavy", "other": "with_other"}


def _graph() -> onnx.ModelProto:
    """score = sum(x * w); heavy = relu(x * w) @ v (shares x * w with the score, owns v);
    other = x + w (uses w, which the score also reads)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "w")
    v = numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "v")
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["xw"]),
        helper.make_node("ReduceSum", ["xw"], ["score"], keepdims=0),
        helper.make_node("Relu", ["xw"], ["relu"]),
        helper.make_node("MatMul", ["relu", "v"], ["heavy"]),
        helper.make_node("Add", ["x", "w"], ["other"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 4])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("heavy", TensorProto.FLOAT, ["n", 4, 4]),
            helper.make_tensor_value_info("other", TensorProto.FLOAT, ["n", 4, 4]),
        ],
        initializer=[w, v],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_switched_on_outputs_equal_the_plain_graph_and_switched_off_ones_are_empty():
    plain = _graph()
    gated = gate_outputs(plain, FLAGS)
    onnx.checker.check_model(gated, full_check=True)
    x = np.random.default_rng(1).normal(size=(3, 4, 4)).astype(np.float32)
    expected = _run(plain, x=x)
    on = np.array(True)
    for got, want in zip(_run(gated, x=x, with_heavy=on, with_other=on), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    score, heavy, other = _run(gated, x=x, with_heavy=np.array(False), with_other=on)
    np.testing.assert_array_equal(score, expected[0])
    assert heavy.shape == (0, 4, 4) and heavy.dtype == np.float32
    np.testing.assert_array_equal(other, expected[2])


def test_only_the_nodes_an_optional_output_owns_move_and_each_branch_has_its_own_weights():
    gated = gate_outputs(_graph(), FLAGS).graph
    main_ops = [n.op_type for n in gated.node]
    assert main_ops.count("Mul") == 1 and "Relu" not in main_ops and "Add" not in main_ops
    assert [i.name for i in gated.input] == ["x", "with_heavy", "with_other"]
    assert [w.name for w in gated.initializer] == ["w"]  # v is only the heavy output's
    switches = [n for n in gated.node if n.op_type == "If"]
    branches = {n.output[0]: {a.name: a.g for a in n.attribute}["then_branch"] for n in switches}
    assert [n.op_type for n in branches["heavy"].node] == ["Relu", "MatMul", "Identity"]
    assert [w.name for w in branches["heavy"].initializer] == ["v"]
    # w is also read by the main graph: the branch gets a copy under its own name, same values.
    (copy,) = branches["other"].initializer
    assert copy.name != "w" and copy.name in branches["other"].node[0].input
    np.testing.assert_array_equal(numpy_helper.to_array(copy), numpy_helper.to_array(gated.initializer[0]))


def test_nodes_two_optional_outputs_share_stay_in_the_main_graph():
    model = _graph()
    model.graph.node[1].input[0] = "x"  # the score no longer reads x * w; heavy and other still do
    model.graph.node[4].input[:] = ["xw", "w"]
    gated = gate_outputs(model, FLAGS)
    assert "Mul" in [n.op_type for n in gated.graph.node]
    x = np.ones((2, 4, 4), np.float32)
    on = np.array(True)
    for got, want in zip(_run(gated, x=x, with_heavy=on, with_other=on), _run(model, x=x), strict=True):
        np.testing.assert_array_equal(got, want)


def test_an_output_the_always_part_computes_anyway_can_still_be_switched_off():
    gated = gate_outputs(_graph(), {"heavy": "with_heavy"})
    x = np.ones((2, 4, 4), np.float32)
    _, heavy_on, _ = _run(gated, x=x, with_heavy=np.array(True))
    _, heavy_off, _ = _run(gated, x=x, with_heavy=np.array(False))
    assert heavy_on.shape == (2, 4, 4) and heavy_off.shape == (0, 4, 4)
    # "score" needs x * w, which heavy also reads: gating "score" too leaves x * w in the main graph.
    both = gate_outputs(_graph(), {"score": "with_score", "heavy": "with_heavy"})
    assert [n.op_type for n in both.graph.node if n.op_type != "If"] == ["Mul", "Add"]


def test_refuses_unknown_outputs_inputs_and_graphs_with_control_flow():
    with pytest.raises(ValueError, match="no graph outputs named"):
        gate_outputs(_graph(), {"missing": "with_missing"})
    model = _graph()
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 4]))
    with pytest.raises(ValueError, match="graph inputs or initializers"):
        gate_outputs(model, {"x": "with_x"})
    with pytest.raises(ValueError, match="control flow"):
        gate_outputs(gate_outputs(_graph(), {"heavy": "with_heavy"}), {"other": "with_other"})
