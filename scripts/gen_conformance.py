#!/usr/bin/env python3
"""Regenerate ONNX's node conformance cases (onnx==1.23.2) on disk for kiln's harness.

Each case becomes OUT/<name>/model.onnx plus test_data_set_N/{input,output}_K.pb, the layout
ONNX's own backend runner reads. OUT/manifest.tsv lists every case with its scope: `in` or the
exclusion reason (training op, ai.onnx.ml, strings, random generators, ImageDecoder, exotic dtypes),
so the harness and the report agree with the issue's definition of the in-scope set.
"""
import os
import shutil
import sys

import onnx
from onnx import TensorProto, numpy_helper
from onnx.backend.test.case.node import collect_testcases

EXCLUDED_DTYPES = {
    TensorProto.STRING: "string tensors",
    TensorProto.COMPLEX64: "complex dtype",
    TensorProto.COMPLEX128: "complex dtype",
}
for _name in dir(TensorProto):
    if _name.startswith(("FLOAT8", "FLOAT4", "INT4", "UINT4", "INT2", "UINT2")):
        EXCLUDED_DTYPES[getattr(TensorProto, _name)] = f"{_name.lower()} dtype"

RANDOM_OPS = {"Bernoulli", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
STRING_OPS = {"StringNormalizer", "StringConcat", "StringSplit", "RegexFullMatch", "TfIdfVectorizer"}


def iter_types(t):
    """Yield every element dtype used by a TypeProto (tensor, sequence, optional, map)."""
    which = t.WhichOneof("value")
    if which == "tensor_type":
        yield t.tensor_type.elem_type
    elif which == "sparse_tensor_type":
        yield t.sparse_tensor_type.elem_type
    elif which == "sequence_type":
        yield from iter_types(t.sequence_type.elem_type)
    elif which == "optional_type":
        yield from iter_types(t.optional_type.elem_type)
    elif which == "map_type":
        yield t.map_type.key_type
        yield from iter_types(t.map_type.value_type)


def iter_graph(g):
    for v in list(g.input) + list(g.output) + list(g.value_info):
        for dt in iter_types(v.type):
            yield ("dtype", dt)
    for init in g.initializer:
        yield ("dtype", init.data_type)
    for n in g.node:
        yield ("node", n)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield ("dtype", a.t.data_type)
            if a.type == onnx.AttributeProto.GRAPH:
                yield from iter_graph(a.g)
            for sub in a.graphs:
                yield from iter_graph(sub)
            if a.name in ("to", "dtype", "output_dtype") and a.type == onnx.AttributeProto.INT:
                yield ("dtype", a.i)


def exclusion(model):
    for kind, item in iter_graph(model.graph):
        if kind == "dtype" and item in EXCLUDED_DTYPES:
            return EXCLUDED_DTYPES[item]
        if kind == "node":
            if item.domain == "ai.onnx.preview.training":
                return "training op"
            if item.domain == "ai.onnx.ml":
                return "ai.onnx.ml op"
            if item.op_type in RANDOM_OPS:
                return "random generator"
            if item.op_type == "ImageDecoder":
                return "ImageDecoder"
            if item.op_type in STRING_OPS:
                return "string op"
    return None


def write_value(path, value, type_proto, name):
    if type_proto.HasField("sequence_type"):
        proto = numpy_helper.from_list(value, name)
    elif type_proto.HasField("optional_type"):
        proto = numpy_helper.from_optional(value, name)
    elif type_proto.HasField("map_type"):
        proto = numpy_helper.from_dict(value, name)
    elif isinstance(value, TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/onnx-node-cases"
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    rows = []
    for case in collect_testcases():
        if case.kind != "node":
            continue
        d = os.path.join(out, case.name)
        os.makedirs(d)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        g = case.model.graph
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds = os.path.join(d, f"test_data_set_{i}")
            os.makedirs(ds)
            for j, v in enumerate(inputs):
                write_value(os.path.join(ds, f"input_{j}.pb"), v, g.input[j].type, g.input[j].name)
            for j, v in enumerate(outputs):
                write_value(os.path.join(ds, f"output_{j}.pb"), v, g.output[j].type, g.output[j].name)
        ops = sorted({n.op_type for n in g.node})
        rows.append((case.name, exclusion(case.model) or "in", ",".join(ops), repr(case.rtol), repr(case.atol)))
    with open(os.path.join(out, "manifest.tsv"), "w") as f:
        f.write("case\tscope\tops\trtol\tatol\n")
        for r in sorted(rows):
            f.write("\t".join(r) + "\n")
    inscope = sum(1 for r in rows if r[1] == "in")
    print(f"wrote {len(rows)} node cases to {out}: {inscope} in scope, {len(rows) - inscope} excluded")


if __name__ == "__main__":
    main()
