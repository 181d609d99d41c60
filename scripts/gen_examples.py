#!/usr/bin/env python3
"""Write the example models in examples/: a small CNN and a small transformer encoder.

The graphs are spelled the way PyTorch's ONNX exporter (opset 17) writes such models: Conv +
BatchNormalization + Relu blocks with a residual Add, Flatten + Gemm heads; MatMul + Add
projections, LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add, GELU in its erf
form, and the Shape → Gather → Unsqueeze → Concat → Reshape sub-graphs exporters emit for
dynamic reshapes. Weights are random with a fixed seed, so the files are reproducible.

usage: gen_examples.py [OUT_DIR]   (default: examples)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
rng = np.random.default_rng(2026)


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, op):
        self.n += 1
        return f"/{op}_{self.n}"

    def weight(self, name, shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        arr = (rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op, inputs, n_out=1, **attrs):
        nm = self.name(op)
        outs = [f"{nm}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=nm, **attrs))
        return outs[0] if n_out == 1 else outs


def conv_bn_relu(g, x, cin, cout, prefix, stride=1, relu=True):
    w = g.weight(f"{prefix}.conv.weight", [cout, cin, 3, 3])
    y = g.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride])
    scale = g.const(f"{prefix}.bn.weight", (1 + 0.1 * rng.standard_normal(cout)).astype(np.float32))
    bias = g.const(f"{prefix}.bn.bias", (0.1 * rng.standard_normal(cout)).astype(np.float32))
    mean = g.const(f"{prefix}.bn.running_mean", (0.1 * rng.standard_normal(cout)).astype(np.float32))
    var = g.const(f"{prefix}.bn.running_var", (1 + 0.1 * rng.random(cout)).astype(np.float32))
    y = g.op("BatchNormalization", [y, scale, bias, mean, var], epsilon=1e-5, momentum=0.9)
    return g.op("Relu", [y]) if relu else y


def small_cnn():
    g = Graph()
    x = conv_bn_relu(g, "input", 3, 16, "stem")
    y = conv_bn_relu(g, x, 16, 16, "block1.0")
    y = conv_bn_relu(g, y, 16, 16, "block1.1", relu=False)
    x = g.op("Relu", [g.op("Add", [y, x])])
    x = conv_bn_relu(g, x, 16, 32, "block2.0", stride=2)
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x], axis=1)
    w = g.weight("fc.weight", [10, 32])
    b = g.weight("fc.bias", [10], scale=0.1)
    g.nodes.append(helper.make_node("Gemm", [x, w, b], ["logits"], name="/fc/Gemm", alpha=1.0, beta=1.0, transB=1))
    graph = helper.make_graph(
        g.nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        g.inits,
    )
    return graph


def layer_norm(g, x, d, prefix):
    mean = g.op("ReduceMean", [x], axes=[-1], keepdims=1)
    xc = g.op("Sub", [x, mean])
    var = g.op("ReduceMean", [g.op("Pow", [xc, g.const(f"{prefix}.two", np.array(2.0, np.float32))])], axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const(f"{prefix}.eps", np.array(1e-5, np.float32))])])
    y = g.op("Div", [xc, std])
    y = g.op("Mul", [y, g.const(f"{prefix}.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))])
    return g.op("Add", [y, g.const(f"{prefix}.bias", (0.1 * rng.standard_normal(d)).astype(np.float32))])


def linear(g, x, din, dout, prefix):
    w = g.weight(f"{prefix}.weight", [din, dout])
    b = g.weight(f"{prefix}.bias", [dout], scale=0.02)
    return g.op("Add", [g.op("MatMul", [x, w]), b])


def dyn_reshape(g, x, tail, prefix):
    """Reshape x to [batch, seq, *tail] through the Shape→Gather→Unsqueeze→Concat sub-graph."""
    shape = g.op("Shape", [x])
    dims = []
    for i in (0, 1):
        d = g.op("Gather", [shape, g.const(f"{prefix}.idx{i}", np.array(i, np.int64))], axis=0)
        dims.append(g.op("Unsqueeze", [d, g.const(f"{prefix}.ax{i}", np.array([0], np.int64))]))
    target = g.op("Concat", dims + [g.const(f"{prefix}.tail", np.array(tail, np.int64))], axis=0)
    return g.op("Reshape", [x, target])


def encoder_layer(g, x, d, heads, ff, prefix):
    hd = d // heads
    h = layer_norm(g, x, d, f"{prefix}.ln1")
    q = g.op("Transpose", [dyn_reshape(g, linear(g, h, d, d, f"{prefix}.attn.q"), [heads, hd], f"{prefix}.q")], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [dyn_reshape(g, linear(g, h, d, d, f"{prefix}.attn.k"), [heads, hd], f"{prefix}.k")], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [dyn_reshape(g, linear(g, h, d, d, f"{prefix}.attn.v"), [heads, hd], f"{prefix}.v")], perm=[0, 2, 1, 3])
    s = g.op("Div", [g.op("MatMul", [q, k]), g.const(f"{prefix}.scale", np.array(np.sqrt(hd), np.float32))])
    p = g.op("Softmax", [s], axis=-1)
    o = g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
    o = dyn_reshape(g, o, [d], f"{prefix}.o")
    x = g.op("Add", [x, linear(g, o, d, d, f"{prefix}.attn.out")])
    h = layer_norm(g, x, d, f"{prefix}.ln2")
    h = linear(g, h, d, ff, f"{prefix}.ff1")
    # GELU, erf form: 0.5 * x * (1 + erf(x / sqrt(2)))
    e = g.op("Erf", [g.op("Div", [h, g.const(f"{prefix}.sqrt2", np.array(np.sqrt(2.0), np.float32))])])
    h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [e, g.const(f"{prefix}.one", np.array(1.0, np.float32))])]),
                     g.const(f"{prefix}.half", np.array(0.5, np.float32))])
    return g.op("Add", [x, linear(g, h, ff, d, f"{prefix}.ff2")])


def small_transformer(vocab=1000, d=64, heads=4, ff=256, layers=2, max_len=128):
    g = Graph()
    tok = g.op("Gather", [g.weight("embed.tokens", [vocab, d], scale=0.02), "input_ids"], axis=0)
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("seq_index", np.array(1, np.int64))], axis=0)
    pos_ids = g.op("Range", [g.const("zero", np.array(0, np.int64)), seq, g.const("one", np.array(1, np.int64))])
    pos = g.op("Gather", [g.weight("embed.positions", [max_len, d], scale=0.02), pos_ids], axis=0)
    x = g.op("Add", [tok, pos])
    for i in range(layers):
        x = encoder_layer(g, x, d, heads, ff, f"layers.{i}")
    x = layer_norm(g, x, d, "final_ln")
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/output/Identity"))
    return helper.make_graph(
        g.nodes,
        "small_transformer_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", d])],
        g.inits,
    )


def save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln-examples")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    print(f"wrote {path} ({len(graph.node)} nodes)")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "examples"
    os.makedirs(out, exist_ok=True)
    save(small_cnn(), os.path.join(out, "cnn.onnx"))
    save(small_transformer(), os.path.join(out, "transformer.onnx"))


if __name__ == "__main__":
    main()
