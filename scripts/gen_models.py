#!/usr/bin/env python3
"""Write four reference models with random weights: ResNet-50, MobileNetV2, BERT-base and ViT-B/16.

The graphs are spelled the way PyTorch's ONNX exporter (torch.onnx.export, opset 17, eval mode,
dynamic batch/sequence axes) writes torchvision's resnet50 / mobilenet_v2 and HuggingFace's
BertModel (eager attention): node names and value names follow the exporter's scope scheme
("/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/conv1/Conv_output_0"), parameters keep their
PyTorch state-dict names, transposed Linear weights are "onnx::MatMul_N" initializers, small
scalars and shape pieces are Constant nodes. BatchNormalization nodes are kept separate (not
folded into the convolutions); BERT's LayerNorm is decomposed and GELU is in its erf form.

Weights are random with a fixed seed (so the files are reproducible), scaled so activations stay
O(1) through the whole network: Kaiming-normal convolutions (ResNet's residual branches scaled
down), BN weights ~N(1, 0.1), running_mean ~N(0, 0.1), running_var ~U(0.5, 1.5); BERT weights
~N(0, 0.02). Output std: ResNet-50 ~1, MobileNetV2 ~1, BERT last_hidden_state ~1.

The files are too big to commit; they go to a cache directory.

With --pruned, structurally pruned variants are written too (MODEL_p30/_p50/_p70.onnx): the dense
model with 30/50/70 % of the channels of every prunable layer zeroed, lowest L1 norm first, the
way a structured-pruning tool leaves a model before it is compacted (see prune_model). The dense
files stay byte-identical (the same seeds; pruning edits a copy).

usage: gen_models.py [--out DIR] [--force] [--pruned] [MODEL ...]   (default DIR: target/models;
       MODEL is resnet50, mobilenetv2, bert_base or vit_b16; default all four)
"""
import argparse
import collections
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Graph:
    """Collects nodes and initializers, naming them the way the TorchScript exporter does."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.used = collections.Counter()
        self.anon = 0  # numbering of "onnx::Op_N" initializers

    def _node_name(self, scope, op):
        base = f"{scope}/{op}"
        k = self.used[base]
        self.used[base] += 1
        return base if k == 0 else f"{base}_{k}"

    def op(self, op, inputs, scope="", out=None, n_out=1, **attrs):
        name = self._node_name(scope, op)
        outs = [out] if out is not None else [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def constant(self, value, scope="", dtype=None):
        arr = np.array(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        return self.op("Constant", [], scope=scope, value=numpy_helper.from_array(arr))

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def anon_init(self, op, arr):
        self.anon += 1
        return self.init(f"onnx::{op}_{self.anon}", arr)

    def normal(self, shape, std, mean=0.0):
        return (mean + std * self.rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    def uniform(self, shape, lo, hi):
        return self.rng.uniform(lo, hi, shape).astype(np.float32)

    # --- torch.nn modules -----------------------------------------------------------------
    def conv(self, x, prefix, scope, cin, cout, k, stride=1, pad=0, group=1, gain=2.0):
        """nn.Conv2d(bias=False) with Kaiming-normal (fan_in) weights; `gain` is 2 after a ReLU."""
        fan_in = cin // group * k * k
        w = self.init(f"{prefix}.weight", self.normal([cout, cin // group, k, k], np.sqrt(gain / fan_in)))
        return self.op("Conv", [x, w], scope=scope, dilations=[1, 1], group=group,
                       kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride])

    def bn(self, x, prefix, scope, c):
        """nn.BatchNorm2d in eval mode: running statistics, eps 1e-5, torch momentum 0.1."""
        names = [
            self.init(f"{prefix}.weight", self.normal([c], 0.1, mean=1.0)),
            self.init(f"{prefix}.bias", self.normal([c], 0.1)),
            self.init(f"{prefix}.running_mean", self.normal([c], 0.1)),
            self.init(f"{prefix}.running_var", self.uniform([c], 0.5, 1.5)),
        ]
        return self.op("BatchNormalization", [x] + names, scope=scope, epsilon=1e-5, momentum=0.9)

    def linear_gemm(self, x, prefix, scope, cin, cout, out=None):
        """nn.Linear on a 2-D input: Gemm(transB=1), PyTorch's default U(±1/sqrt(fan_in)) init."""
        bound = 1 / np.sqrt(cin)
        w = self.init(f"{prefix}.weight", self.uniform([cout, cin], -bound, bound))
        b = self.init(f"{prefix}.bias", self.uniform([cout], -bound, bound))
        return self.op("Gemm", [x, w, b], scope=scope, out=out, alpha=1.0, beta=1.0, transB=1)

    def model(self, name, inputs, outputs, doc):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pytorch", producer_version="2.1.0", doc_string=doc)
        m.ir_version = 8  # what torch 2.x writes for opset 17
        return m


def image_io(g):
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1000])
    return [inp], [out]


# --- ResNet-50 ---------------------------------------------------------------------------------
def resnet50():
    g = Graph(seed=50)
    x = g.conv("input", "conv1", "/conv1", 3, 64, 7, stride=2, pad=3, gain=1.0)
    x = g.bn(x, "bn1", "/bn1", 64)
    x = g.op("Relu", [x], scope="/relu")
    x = g.op("MaxPool", [x], scope="/maxpool", ceil_mode=0, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             strides=[2, 2])
    cin = 64
    for li, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 1):
        for bi in range(blocks):
            s = stride if bi == 0 else 1
            p, sc = f"layer{li}.{bi}", f"/layer{li}/layer{li}.{bi}"
            cout = width * 4
            identity = x
            y = g.conv(x, f"{p}.conv1", f"{sc}/conv1", cin, width, 1, gain=1.0)
            y = g.op("Relu", [g.bn(y, f"{p}.bn1", f"{sc}/bn1", width)], scope=f"{sc}/relu")
            y = g.conv(y, f"{p}.conv2", f"{sc}/conv2", width, width, 3, stride=s, pad=1)  # v1.5
            y = g.op("Relu", [g.bn(y, f"{p}.bn2", f"{sc}/bn2", width)], scope=f"{sc}/relu_1")
            # Residual branch scaled down (gain 0.25, not 2): with full Kaiming gain each block
            # doubles the residual stream's variance (2^16 over the network); trained ResNets
            # likewise have small residual branches.
            y = g.conv(y, f"{p}.conv3", f"{sc}/conv3", width, cout, 1, gain=0.25)
            y = g.bn(y, f"{p}.bn3", f"{sc}/bn3", cout)
            if bi == 0:
                d = g.conv(x, f"{p}.downsample.0", f"{sc}/downsample/downsample.0", cin, cout, 1,
                           stride=s, gain=1.0)
                identity = g.bn(d, f"{p}.downsample.1", f"{sc}/downsample/downsample.1", cout)
            y = g.op("Add", [y, identity], scope=sc)
            x = g.op("Relu", [y], scope=f"{sc}/relu_2")
            cin = cout
    x = g.op("GlobalAveragePool", [x], scope="/avgpool")
    x = g.op("Flatten", [x], scope="", axis=1)
    g.linear_gemm(x, "fc", "/fc", 2048, 1000, out="output")
    return g.model("main_graph", *image_io(g), "torchvision resnet50 (v1.5), random weights")


# --- MobileNetV2 -------------------------------------------------------------------------------
def mobilenetv2():
    g = Graph(seed=2)
    relu6_min = g.constant(0.0, scope="/features/features.0/features.0.2")
    relu6_max = g.constant(6.0, scope="/features/features.0/features.0.2")

    def conv_bn_act(x, idx, sc, cin, cout, k, stride=1, group=1, act=True, gain=2.0):
        y = g.conv(x, f"{idx}.0", f"{sc}/{sc.rsplit('/', 1)[-1]}.0", cin, cout, k, stride=stride,
                   pad=(k - 1) // 2, group=group, gain=gain)
        y = g.bn(y, f"{idx}.1", f"{sc}/{sc.rsplit('/', 1)[-1]}.1", cout)
        return g.op("Clip", [y, relu6_min, relu6_max], scope=f"{sc}/{sc.rsplit('/', 1)[-1]}.2") if act else y

    x = conv_bn_act("input", "features.0", "/features/features.0", 3, 32, 3, stride=2, gain=1.0)
    cin, fi = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            p, sc = f"features.{fi}.conv", f"/features/features.{fi}/conv"
            y, ci = x, 0
            if t != 1:  # expand: its input is the linear bottleneck (no ReLU before it)
                y = conv_bn_act(y, f"{p}.{ci}", f"{sc}/conv.{ci}", cin, hidden, 1, gain=1.0)
                ci += 1
            y = conv_bn_act(y, f"{p}.{ci}", f"{sc}/conv.{ci}", hidden, hidden, 3, stride=stride,
                            group=hidden, gain=1.0 if t == 1 and fi == 1 else 2.0)
            ci += 1
            y = g.conv(y, f"{p}.{ci}", f"{sc}/conv.{ci}", hidden, c, 1)
            y = g.bn(y, f"{p}.{ci + 1}", f"{sc}/conv.{ci + 1}", c)
            if stride == 1 and cin == c:
                y = g.op("Add", [x, y], scope=f"/features/features.{fi}")
            x, cin, fi = y, c, fi + 1
    x = conv_bn_act(x, "features.18", "/features/features.18", 320, 1280, 1, gain=1.0)
    x = g.op("GlobalAveragePool", [x], scope="")
    x = g.op("Flatten", [x], scope="", axis=1)
    g.linear_gemm(x, "classifier.1", "/classifier/classifier.1", 1280, 1000, out="output")
    return g.model("main_graph", *image_io(g), "torchvision mobilenet_v2 (width 1.0), random weights")


# --- BERT-base ---------------------------------------------------------------------------------
HIDDEN, HEADS, HEAD_DIM, FFN, LAYERS, VOCAB, MAX_POS = 768, 12, 64, 3072, 12, 30522, 512


def bert_base():
    g = Graph(seed=110)

    def layer_norm(x, prefix, sc, out=None):
        mean = g.op("ReduceMean", [x], scope=sc, axes=[-1])
        d = g.op("Sub", [x, mean], scope=sc)
        sq = g.op("Pow", [d, g.constant(2.0, scope=sc)], scope=sc)
        var = g.op("ReduceMean", [sq], scope=sc, axes=[-1])
        std = g.op("Sqrt", [g.op("Add", [var, g.constant(1e-12, scope=sc)], scope=sc)], scope=sc)
        y = g.op("Div", [d, std], scope=sc)
        w = g.init(f"{prefix}.weight", g.normal([HIDDEN], 0.02, mean=1.0))
        b = g.init(f"{prefix}.bias", g.normal([HIDDEN], 0.02))
        return g.op("Add", [g.op("Mul", [y, w], scope=sc), b], scope=sc, out=out)

    def linear(x, prefix, sc, cin, cout):
        """nn.Linear on a 3-D input: MatMul with the transposed weight, then Add bias."""
        w = g.anon_init("MatMul", g.normal([cout, cin], 0.02).T)
        b = g.init(f"{prefix}.bias", g.normal([cout], 0.02))
        return g.op("Add", [b, g.op("MatMul", [x, w], scope=sc)], scope=sc)

    def dim(x, axis, sc):
        """x.size(axis) as a 1-D tensor: Shape -> Gather -> Unsqueeze."""
        s = g.op("Shape", [x], scope=sc)
        d = g.op("Gather", [s, g.constant(axis, scope=sc, dtype=np.int64)], scope=sc, axis=0)
        return g.op("Unsqueeze", [d, g.constant([0], scope=sc, dtype=np.int64)], scope=sc)

    def split_heads(x, sc, perm):
        shape = g.op("Concat", [dim(x, 0, sc), dim(x, 1, sc), g.constant([HEADS], scope=sc, dtype=np.int64),
                                g.constant([HEAD_DIM], scope=sc, dtype=np.int64)], scope=sc, axis=0)
        return g.op("Transpose", [g.op("Reshape", [x, shape], scope=sc)], scope=sc, perm=perm)

    # embeddings
    sc = "/embeddings"
    seq_len = dim("input_ids", 1, sc)
    pos_ids = g.init("embeddings.position_ids", np.arange(MAX_POS, dtype=np.int64)[None, :])
    pos_ids = g.op("Slice", [pos_ids, g.constant([0], scope=sc, dtype=np.int64), seq_len,
                             g.constant([1], scope=sc, dtype=np.int64),
                             g.constant([1], scope=sc, dtype=np.int64)], scope=sc)
    word = g.init("embeddings.word_embeddings.weight", g.normal([VOCAB, HIDDEN], 0.02))
    pos = g.init("embeddings.position_embeddings.weight", g.normal([MAX_POS, HIDDEN], 0.02))
    tt = g.init("embeddings.token_type_embeddings.weight", g.normal([2, HIDDEN], 0.02))
    e = g.op("Gather", [word, "input_ids"], scope=f"{sc}/word_embeddings")
    t = g.op("Gather", [tt, "token_type_ids"], scope=f"{sc}/token_type_embeddings")
    e = g.op("Add", [e, t], scope=sc)
    p = g.op("Gather", [pos, pos_ids], scope=f"{sc}/position_embeddings")
    e = g.op("Add", [e, p], scope=sc)
    x = layer_norm(e, "embeddings.LayerNorm", f"{sc}/LayerNorm")

    # extended attention mask: (1 - mask[:, None, None, :]) * -10000
    m = g.op("Unsqueeze", ["attention_mask", g.constant([1], dtype=np.int64)])
    m = g.op("Unsqueeze", [m, g.constant([2], dtype=np.int64)])
    m = g.op("Cast", [m], to=TensorProto.FLOAT)
    m = g.op("Sub", [g.constant(1.0), m])
    mask = g.op("Mul", [m, g.constant(-10000.0)])

    for li in range(LAYERS):
        p, sc = f"encoder.layer.{li}", f"/encoder/layer.{li}"
        asc = f"{sc}/attention/self"
        q = linear(x, f"{p}.attention.self.query", f"{asc}/query", HIDDEN, HIDDEN)
        k = linear(x, f"{p}.attention.self.key", f"{asc}/key", HIDDEN, HIDDEN)
        v = linear(x, f"{p}.attention.self.value", f"{asc}/value", HIDDEN, HIDDEN)
        q = split_heads(q, asc, [0, 2, 1, 3])
        k = split_heads(k, asc, [0, 2, 3, 1])  # permute + transpose(-1, -2), fused by the exporter
        v = split_heads(v, asc, [0, 2, 1, 3])
        s = g.op("MatMul", [q, k], scope=asc)
        s = g.op("Div", [s, g.constant(float(np.sqrt(HEAD_DIM)), scope=asc)], scope=asc)
        s = g.op("Add", [s, mask], scope=asc)
        s = g.op("Softmax", [s], scope=asc, axis=-1)
        c = g.op("MatMul", [s, v], scope=asc)
        c = g.op("Transpose", [c], scope=asc, perm=[0, 2, 1, 3])
        shape = g.op("Concat", [dim(c, 0, asc), dim(c, 1, asc), g.constant([HIDDEN], scope=asc, dtype=np.int64)],
                     scope=asc, axis=0)
        c = g.op("Reshape", [c, shape], scope=asc)
        osc = f"{sc}/attention/output"
        a = linear(c, f"{p}.attention.output.dense", f"{osc}/dense", HIDDEN, HIDDEN)
        a = g.op("Add", [a, x], scope=osc)
        a = layer_norm(a, f"{p}.attention.output.LayerNorm", f"{osc}/LayerNorm")
        isc = f"{sc}/intermediate"
        h = linear(a, f"{p}.intermediate.dense", f"{isc}/dense", HIDDEN, FFN)
        gsc = f"{isc}/intermediate_act_fn"
        e = g.op("Erf", [g.op("Div", [h, g.constant(1.4142135381698608, scope=gsc)], scope=gsc)], scope=gsc)
        e = g.op("Add", [e, g.constant(1.0, scope=gsc)], scope=gsc)
        h = g.op("Mul", [g.op("Mul", [h, e], scope=gsc), g.constant(0.5, scope=gsc)], scope=gsc)
        osc = f"{sc}/output"
        o = linear(h, f"{p}.output.dense", f"{osc}/dense", FFN, HIDDEN)
        o = g.op("Add", [o, a], scope=osc)
        last = li == LAYERS - 1
        x = layer_norm(o, f"{p}.output.LayerNorm", f"{osc}/LayerNorm", out="last_hidden_state" if last else None)

    # pooler: first token -> Linear -> Tanh
    sc = "/pooler"
    first = g.op("Gather", [x, g.constant(0, scope=sc, dtype=np.int64)], scope=sc, axis=1)
    w = g.init("pooler.dense.weight", g.normal([HIDDEN, HIDDEN], 0.02))
    b = g.init("pooler.dense.bias", g.normal([HIDDEN], 0.02))
    pooled = g.op("Gemm", [first, w, b], scope=f"{sc}/dense", alpha=1.0, beta=1.0, transB=1)
    g.op("Tanh", [pooled], scope=f"{sc}/activation", out="pooler_output")

    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
            helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch", HIDDEN])]
    return g.model("main_graph", ins, outs, "HuggingFace BertModel (bert-base-uncased config), random weights")


# --- structured pruning ------------------------------------------------------------------------
SPARSITIES = (30, 50, 70)
# The models prune_model knows how to prune.
PRUNABLE = ("resnet50", "mobilenetv2", "bert_base")


def _lowest_l1(scores, frac):
    """Indices of the round(frac * n) smallest scores (ties by index), at least one kept."""
    n = len(scores)
    k = min(int(round(frac * n)), n - 1)
    return np.sort(np.argsort(scores, kind="stable")[:k])


def prune_model(model, name, percent):
    """Zero `percent` % of the channels of every prunable layer of a copy of `model`, by L1 norm.

    ResNet-50 / MobileNetV2: every Conv whose BatchNormalization feeds a Relu/Clip (not a residual
    Add: the residual stream's channels are shared by a whole stage and pruned per layer they
    would never be dead on every path) loses its lowest-L1 filters: filter, BN scale and BN shift
    zeroed, so the channel is exactly 0 after the activation. BERT-base: per layer, the heads with
    the lowest L1 norm over their Q/K/V columns and output-projection rows lose all four slices
    and their biases; the FFN neurons with the lowest L1 norm over their intermediate column and
    output row lose both and the intermediate bias.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    arrays = {}

    def arr(n):
        if n not in arrays:
            arrays[n] = numpy_helper.to_array(inits[n]).copy()
        return arrays[n]

    consumers = collections.defaultdict(list)
    for node in g.node:
        for i in node.input:
            consumers[i].append(node)
    frac = percent / 100.0
    if name in ("resnet50", "mobilenetv2"):
        for node in g.node:
            if node.op_type != "Conv" or node.input[1] not in inits:
                continue
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            bn = consumers[node.output[0]]
            if group != 1 or len(bn) != 1 or bn[0].op_type != "BatchNormalization":
                continue
            act = consumers[bn[0].output[0]]
            if len(act) != 1 or act[0].op_type not in ("Relu", "Clip"):
                continue
            w = arr(node.input[1])
            drop = _lowest_l1(np.abs(w).reshape(w.shape[0], -1).sum(1), frac)
            w[drop] = 0
            arr(bn[0].input[1])[drop] = 0  # scale
            arr(bn[0].input[2])[drop] = 0  # shift
    elif name == "bert_base":
        by_name = {n.name: n for n in g.node}

        def linear(scope):
            """(weight [in, out], bias [out]) initializer names of the Linear at `scope`."""
            mm = by_name[f"{scope}/MatMul"]
            add = by_name[f"{scope}/Add"]
            return mm.input[1], next(i for i in add.input if i in inits)

        for li in range(LAYERS):
            sc = f"/encoder/layer.{li}"
            qkv = [linear(f"{sc}/attention/self/{p}") for p in ("query", "key", "value")]
            wo, _ = linear(f"{sc}/attention/output/dense")
            score = np.zeros(HEADS)
            for h in range(HEADS):
                cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                score[h] = sum(np.abs(arr(w)[:, cols]).sum() for w, _ in qkv) + np.abs(arr(wo)[cols]).sum()
            for h in _lowest_l1(score, frac):
                cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                for w, b in qkv:
                    arr(w)[:, cols] = 0
                    arr(b)[cols] = 0
                arr(wo)[cols] = 0
            w1, b1 = linear(f"{sc}/intermediate/dense")
            w2, _ = linear(f"{sc}/output/dense")
            score = np.abs(arr(w1)).sum(0) + np.abs(arr(w2)).sum(1)
            drop = _lowest_l1(score, frac)
            arr(w1)[:, drop] = 0
            arr(b1)[drop] = 0
            arr(w2)[drop] = 0
    else:
        raise ValueError(f"no pruning recipe for {name}")
    for n, a in arrays.items():
        inits[n].CopyFrom(numpy_helper.from_array(a, n))
    m.doc_string = f"{model.doc_string}; {percent} % of channels structurally zeroed (L1)"
    return m


def save(model, path, t0):
    assert model.ByteSize() < 2**31, "model over 2 GB: would need external data"
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    onnx.checker.check_model(tmp, full_check=True)
    os.replace(tmp, path)
    n_nodes, params, ops = summary(model)
    ops_s = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
    print(f"{path}: {n_nodes} nodes, {params / 1e6:.2f}M params, {os.path.getsize(path) / 2**20:.0f} MiB, "
          f"{time.perf_counter() - t0:.1f}s\n  {ops_s}")


# --- ViT-B/16 ----------------------------------------------------------------------------------
VIT_PATCH, VIT_IMAGE, VIT_CLASSES = 16, 224, 1000


def vit_b16():
    """HuggingFace ViTForImageClassification (google/vit-base-patch16-224 config) as the exporter
    writes it at opset 17: a 16x16 stride-16 patch Conv, flatten + transpose to tokens, a class
    token (Expand to the batch) and position embeddings, 12 pre-LayerNorm encoder layers
    (nn.LayerNorm exports as LayerNormalization at opset 17; GELU in its erf form), a final
    LayerNorm and a Gemm classifier on the class token. Weights ~N(0, 0.02) like BERT."""
    g = Graph(seed=160)
    tokens = (VIT_IMAGE // VIT_PATCH) ** 2 + 1

    def layer_norm(x, prefix, sc):
        w = g.init(f"{prefix}.weight", g.normal([HIDDEN], 0.02, mean=1.0))
        b = g.init(f"{prefix}.bias", g.normal([HIDDEN], 0.02))
        return g.op("LayerNormalization", [x, w, b], scope=sc, axis=-1, epsilon=1e-12)

    def linear(x, prefix, sc, cin, cout):
        w = g.anon_init("MatMul", g.normal([cout, cin], 0.02).T)
        b = g.init(f"{prefix}.bias", g.normal([cout], 0.02))
        return g.op("Add", [b, g.op("MatMul", [x, w], scope=sc)], scope=sc)

    def dim(x, axis, sc):
        s = g.op("Shape", [x], scope=sc)
        d = g.op("Gather", [s, g.constant(axis, scope=sc, dtype=np.int64)], scope=sc, axis=0)
        return g.op("Unsqueeze", [d, g.constant([0], scope=sc, dtype=np.int64)], scope=sc)

    def split_heads(x, sc, perm):
        shape = g.op("Concat", [dim(x, 0, sc), dim(x, 1, sc), g.constant([HEADS], scope=sc, dtype=np.int64),
                                g.constant([HEAD_DIM], scope=sc, dtype=np.int64)], scope=sc, axis=0)
        return g.op("Transpose", [g.op("Reshape", [x, shape], scope=sc)], scope=sc, perm=perm)

    # embeddings: patches -> tokens, class token first, position embeddings added
    sc = "/vit/embeddings"
    psc = f"{sc}/patch_embeddings/projection"
    w = g.init("vit.embeddings.patch_embeddings.projection.weight",
               g.normal([HIDDEN, 3, VIT_PATCH, VIT_PATCH], 0.02))
    b = g.init("vit.embeddings.patch_embeddings.projection.bias", g.normal([HIDDEN], 0.02))
    x = g.op("Conv", ["pixel_values", w, b], scope=psc, dilations=[1, 1], group=1,
             kernel_shape=[VIT_PATCH, VIT_PATCH], pads=[0, 0, 0, 0], strides=[VIT_PATCH, VIT_PATCH])
    x = g.op("Reshape", [x, g.constant([0, HIDDEN, -1], scope=sc, dtype=np.int64)], scope=sc)
    x = g.op("Transpose", [x], scope=sc, perm=[0, 2, 1])
    cls = g.init("vit.embeddings.cls_token", g.normal([1, 1, HIDDEN], 0.02))
    cls_shape = g.op("Concat", [dim(x, 0, sc), g.constant([1, HIDDEN], scope=sc, dtype=np.int64)],
                     scope=sc, axis=0)
    cls = g.op("Expand", [cls, cls_shape], scope=sc)
    x = g.op("Concat", [cls, x], scope=sc, axis=1)
    pos = g.init("vit.embeddings.position_embeddings", g.normal([1, tokens, HIDDEN], 0.02))
    x = g.op("Add", [x, pos], scope=sc)

    for li in range(LAYERS):
        p, sc = f"vit.encoder.layer.{li}", f"/vit/encoder/layer.{li}"
        h = layer_norm(x, f"{p}.layernorm_before", f"{sc}/layernorm_before")
        asc = f"{sc}/attention/attention"
        q = linear(h, f"{p}.attention.attention.query", f"{asc}/query", HIDDEN, HIDDEN)
        k = linear(h, f"{p}.attention.attention.key", f"{asc}/key", HIDDEN, HIDDEN)
        v = linear(h, f"{p}.attention.attention.value", f"{asc}/value", HIDDEN, HIDDEN)
        q = split_heads(q, asc, [0, 2, 1, 3])
        k = split_heads(k, asc, [0, 2, 3, 1])
        v = split_heads(v, asc, [0, 2, 1, 3])
        s = g.op("MatMul", [q, k], scope=asc)
        s = g.op("Div", [s, g.constant(float(np.sqrt(HEAD_DIM)), scope=asc)], scope=asc)
        s = g.op("Softmax", [s], scope=asc, axis=-1)
        c = g.op("MatMul", [s, v], scope=asc)
        c = g.op("Transpose", [c], scope=asc, perm=[0, 2, 1, 3])
        shape = g.op("Concat", [dim(c, 0, asc), dim(c, 1, asc), g.constant([HIDDEN], scope=asc, dtype=np.int64)],
                     scope=asc, axis=0)
        c = g.op("Reshape", [c, shape], scope=asc)
        osc = f"{sc}/attention/output"
        a = linear(c, f"{p}.attention.output.dense", f"{osc}/dense", HIDDEN, HIDDEN)
        x = g.op("Add", [a, x], scope=sc)
        h = layer_norm(x, f"{p}.layernorm_after", f"{sc}/layernorm_after")
        isc = f"{sc}/intermediate"
        h = linear(h, f"{p}.intermediate.dense", f"{isc}/dense", HIDDEN, FFN)
        gsc = f"{isc}/intermediate_act_fn"
        e = g.op("Erf", [g.op("Div", [h, g.constant(1.4142135381698608, scope=gsc)], scope=gsc)], scope=gsc)
        e = g.op("Add", [e, g.constant(1.0, scope=gsc)], scope=gsc)
        h = g.op("Mul", [g.op("Mul", [h, e], scope=gsc), g.constant(0.5, scope=gsc)], scope=gsc)
        h = linear(h, f"{p}.output.dense", f"{sc}/output/dense", FFN, HIDDEN)
        x = g.op("Add", [h, x], scope=sc)

    x = layer_norm(x, "vit.layernorm", "/vit/layernorm")
    first = g.op("Gather", [x, g.constant(0, scope="/classifier", dtype=np.int64)], scope="/classifier", axis=1)
    g.linear_gemm(first, "classifier", "/classifier", HIDDEN, VIT_CLASSES, out="logits")
    ins = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, VIT_IMAGE, VIT_IMAGE])]
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", VIT_CLASSES])]
    return g.model("main_graph", ins, outs, "HuggingFace ViTForImageClassification (vit-base-patch16-224), random weights")


MODELS = {"resnet50": resnet50, "mobilenetv2": mobilenetv2, "bert_base": bert_base, "vit_b16": vit_b16}

# Buffers, not trainable parameters (excluded from the parameter count).
BUFFER_SUFFIXES = (".running_mean", ".running_var", ".position_ids")


def summary(model):
    ops = collections.Counter(n.op_type for n in model.graph.node)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                 if not t.name.endswith(BUFFER_SUFFIXES))
    return len(model.graph.node), params, ops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="target/models", help="output directory (default: target/models)")
    ap.add_argument("--force", action="store_true", help="regenerate models whose file exists")
    ap.add_argument("--pruned", action="store_true",
                    help=f"also write structurally pruned variants (MODEL_p{{{','.join(map(str, SPARSITIES))}}}.onnx)")
    ap.add_argument("models", nargs="*", metavar="MODEL", help=f"one of {', '.join(MODELS)} (default: all)")
    args = ap.parse_args()
    for name in args.models:
        if name not in MODELS:
            ap.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    os.makedirs(args.out, exist_ok=True)
    for name in args.models or MODELS:
        path = os.path.join(args.out, f"{name}.onnx")
        prunable = args.pruned and name in PRUNABLE
        variants = [(p, os.path.join(args.out, f"{name}_p{p}.onnx")) for p in SPARSITIES] if prunable else []
        todo = [(p, v) for p, v in variants if args.force or not os.path.exists(v)]
        dense_todo = args.force or not os.path.exists(path)
        if not dense_todo and not todo:
            print(f"{path}: exists, skipped (--force to regenerate)")
            continue
        t0 = time.perf_counter()
        model = MODELS[name]()
        if dense_todo:
            save(model, path, t0)
        for p, v in todo:
            save(prune_model(model, name, p), v, time.perf_counter())


if __name__ == "__main__":
    sys.exit(main())
