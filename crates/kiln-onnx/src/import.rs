//! ONNX ModelProto → kiln Network: opsets, initializers, inputs/outputs, nodes in dependency
//! order, subgraphs with the values they capture from enclosing graphs.

use crate::importers::{importer_for, NodeImport};
use crate::proto::{
    attribute_proto::AttributeType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TypeProto,
};
use crate::tensor_proto::tensor_from_proto;
use crate::OnnxError;
use kiln_ir::{Attribute, Attributes, DType, Dim, Network, TensorId, ValueType, MAX_ELEMENTS};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// Newest opset of the default ONNX domain that kiln imports (onnx 1.23's).
pub const MAX_OPSET: i64 = 28;

/// Largest model file kiln reads in one piece (protobuf's own limit is 2 GiB).
const MAX_MODEL_BYTES: u64 = 2 << 30;

/// An imported model: the network plus what the file said about itself.
#[derive(Debug, Clone)]
pub struct Model {
    pub network: Network,
    /// Opset of the default domain.
    pub opset: i64,
    pub producer: String,
    pub ir_version: i64,
}

/// Import an ONNX file; external data is read from the file's directory.
pub fn import_file(path: impl AsRef<Path>) -> Result<Model, OnnxError> {
    let path = path.as_ref();
    let io = |source| OnnxError::Io { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_MODEL_BYTES {
        return Err(OnnxError::Decode {
            path: path.to_path_buf(),
            message: format!("file is {len} bytes, above protobuf's 2 GiB limit (use external data)"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let dir = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
    import_bytes(&bytes, dir, path)
}

/// Import a serialized ModelProto. `base_dir` resolves external data; `label` names the
/// source in errors.
pub fn import_bytes(bytes: &[u8], base_dir: Option<&Path>, label: &Path) -> Result<Model, OnnxError> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| OnnxError::Decode { path: label.to_path_buf(), message: e.to_string() })?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Decode { path: label.to_path_buf(), message: "the model has no graph".into() })?;
    let mut opsets = HashMap::new();
    for o in &model.opset_import {
        let domain = normalize_domain(o.domain.as_deref().unwrap_or(""));
        let version = o.version.unwrap_or(0);
        if domain.is_empty() && version > MAX_OPSET {
            return Err(OnnxError::OpsetTooNew { domain: "ai.onnx".into(), version, max: MAX_OPSET });
        }
        opsets.insert(domain.to_string(), version);
    }
    let opset = *opsets.get("").unwrap_or(&1);
    let ctx = ImportCtx { opsets, base_dir };
    let network = import_graph(graph, &ctx, None)?.0;
    Ok(Model {
        network,
        opset,
        producer: format!("{} {}", model.producer_name.unwrap_or_default(), model.producer_version.unwrap_or_default())
            .trim()
            .to_string(),
        ir_version: model.ir_version.unwrap_or(0),
    })
}

fn normalize_domain(d: &str) -> &str {
    if d == "ai.onnx" {
        ""
    } else {
        d
    }
}

struct ImportCtx<'a> {
    opsets: HashMap<String, i64>,
    base_dir: Option<&'a Path>,
}

/// Types visible from enclosing graphs, looked up by name.
type OuterLookup<'a> = &'a dyn Fn(&str) -> Option<Option<ValueType>>;

/// Import one graph. Returns the network and the names it captures from enclosing graphs.
fn import_graph(
    g: &GraphProto,
    ctx: &ImportCtx,
    outer: Option<OuterLookup>,
) -> Result<(Network, Vec<String>), OnnxError> {
    let mut net = Network::new(g.name.clone().unwrap_or_default());
    let mut captured: Vec<String> = Vec::new();
    let mut initializer_names = HashSet::new();
    for init in &g.initializer {
        let name = init.name.clone().unwrap_or_default();
        let t = tensor_from_proto(init, ctx.base_dir)?;
        net.add_constant(&name, t)?;
        initializer_names.insert(name);
    }
    for input in &g.input {
        let name = input.name.clone().unwrap_or_default();
        // Old exporters list initializers among the inputs too; the initializer wins.
        if initializer_names.contains(&name) {
            continue;
        }
        match &input.r#type {
            Some(tp) if tp.value.is_some() => {
                let ty = value_type(tp, &name)?;
                net.add_input(&name, ty)?;
            }
            _ => {
                net.add_untyped_input(&name)?;
            }
        }
    }

    let order = topological_order(g, &net, outer)?;
    let mut layer_names: HashSet<String> = HashSet::new();
    for (index, node) in order.into_iter().map(|i| (i, &g.node[i])) {
        let op = node.op_type.clone().unwrap_or_default();
        let display = match node.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("{op}_{index}"),
        };
        let mut layer_name = display.clone();
        let mut k = 1;
        while layer_names.contains(&layer_name) || net.layer_by_name(&layer_name).is_some() {
            layer_name = format!("{display}_{k}");
            k += 1;
        }
        layer_names.insert(layer_name.clone());
        let node_err = |message: String| OnnxError::Node { node: display.clone(), op: op.clone(), message };

        // Subgraph attributes are imported first; what they capture becomes implicit inputs.
        let mut attrs = Attributes::new();
        let mut sub_captures: Vec<String> = Vec::new();
        for a in &node.attribute {
            let name = a.name.clone().unwrap_or_default();
            let lookup = |n: &str| -> Option<Option<ValueType>> {
                match net.tensor_by_name(n) {
                    Some(id) => Some(net.tensor(id).ty.clone()),
                    None => outer.and_then(|o| o(n)),
                }
            };
            let value = convert_attribute(a, ctx, &lookup, &mut sub_captures).map_err(|e| match e {
                OnnxError::Node { .. } | OnnxError::UnsupportedOp { .. } => e,
                other => node_err(format!("attribute '{name}': {other}")),
            })?;
            attrs.set(&name, value);
        }
        let mut implicit = Vec::new();
        for name in sub_captures {
            let id = resolve(&mut net, &name, outer, &mut captured)
                .ok_or_else(|| OnnxError::UndefinedInput { node: display.clone(), tensor: name.clone() })?;
            if !implicit.contains(&id) {
                implicit.push(id);
            }
        }
        let mut inputs = Vec::with_capacity(node.input.len());
        for name in &node.input {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            let id = resolve(&mut net, name, outer, &mut captured)
                .ok_or_else(|| OnnxError::UndefinedInput { node: display.clone(), tensor: name.clone() })?;
            inputs.push(Some(id));
        }
        let domain = normalize_domain(node.domain.as_deref().unwrap_or("")).to_string();
        let opset = ctx.opsets.get(&domain).copied().unwrap_or(1);
        let unsupported = |reason: Option<String>| OnnxError::UnsupportedOp {
            node: display.clone(),
            op: op.clone(),
            domain: if domain.is_empty() { "ai.onnx".into() } else { domain.clone() },
            opset,
            reason,
        };
        let importer = importer_for(&domain, &op, opset).map_err(unsupported)?;
        let mut ni = NodeImport {
            node: &display,
            layer_name,
            op: &op,
            opset,
            attrs,
            inputs,
            outputs: node.output.clone(),
            implicit,
            net: &mut net,
        };
        importer(&mut ni).map_err(|e| match e {
            crate::importers::ImportError::Unsupported(reason) => unsupported(Some(reason)),
            crate::importers::ImportError::Invalid(message) => node_err(message),
            crate::importers::ImportError::Ir(e) => OnnxError::Ir(e),
        })?;
    }

    for out in &g.output {
        let name = out.name.clone().unwrap_or_default();
        let id =
            resolve(&mut net, &name, outer, &mut captured).ok_or_else(|| OnnxError::UndefinedOutput(name.clone()))?;
        if let Some(tp) = &out.r#type {
            if tp.value.is_some() {
                let ty = value_type(tp, &name)?;
                net.refine_type(id, ty);
            }
        }
        net.mark_output(id)?;
    }
    Ok((net, captured))
}

/// The tensor named `name` in this graph, capturing it from an enclosing graph if needed.
fn resolve(net: &mut Network, name: &str, outer: Option<OuterLookup>, captured: &mut Vec<String>) -> Option<TensorId> {
    if let Some(id) = net.tensor_by_name(name) {
        return Some(id);
    }
    let ty = outer.and_then(|o| o(name))?;
    captured.push(name.to_string());
    net.add_captured(name, ty).ok()
}

/// Names a graph reads but does not define (including inside its own subgraphs).
fn free_names(g: &GraphProto) -> HashSet<String> {
    let mut defined: HashSet<&str> = HashSet::new();
    for i in &g.initializer {
        defined.insert(i.name.as_deref().unwrap_or(""));
    }
    for i in &g.input {
        defined.insert(i.name.as_deref().unwrap_or(""));
    }
    for n in &g.node {
        for o in &n.output {
            defined.insert(o);
        }
    }
    let mut free = HashSet::new();
    for n in &g.node {
        for name in node_reads(n) {
            if !name.is_empty() && !defined.contains(name.as_str()) {
                free.insert(name);
            }
        }
    }
    for o in &g.output {
        let name = o.name.clone().unwrap_or_default();
        if !defined.contains(name.as_str()) {
            free.insert(name);
        }
    }
    free
}

/// Everything a node reads: its inputs and the free names of its subgraphs.
fn node_reads(n: &NodeProto) -> Vec<String> {
    let mut reads: Vec<String> = n.input.iter().filter(|s| !s.is_empty()).cloned().collect();
    for a in &n.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            reads.extend(free_names(g));
        }
    }
    reads
}

/// Node indices in an order where every node comes after what it reads (Kahn's algorithm,
/// stable with respect to file order). Reports reads of undefined tensors and cycles.
fn topological_order(g: &GraphProto, net: &Network, outer: Option<OuterLookup>) -> Result<Vec<usize>, OnnxError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in &n.output {
            if !o.is_empty() {
                producer.insert(o.as_str(), i);
            }
        }
    }
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        let node_name = n
            .name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{}_{i}", n.op_type.clone().unwrap_or_default()));
        for name in node_reads(n) {
            if let Some(&p) = producer.get(name.as_str()) {
                deps[i].push(p);
            } else if net.tensor_by_name(&name).is_none() && outer.and_then(|o| o(&name)).is_none() {
                return Err(OnnxError::UndefinedInput { node: node_name, tensor: name });
            }
        }
    }
    let mut indegree: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); g.node.len()];
    for (i, d) in deps.iter().enumerate() {
        for &p in d {
            users[p].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..g.node.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() != g.node.len() {
        let nodes = (0..g.node.len())
            .filter(|&i| indegree[i] > 0)
            .map(|i| {
                g.node[i]
                    .name
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| format!("{}_{i}", g.node[i].op_type.clone().unwrap_or_default()))
            })
            .collect();
        return Err(OnnxError::Cycle { graph: g.name.clone().unwrap_or_default(), nodes });
    }
    Ok(order)
}

fn convert_attribute(
    a: &AttributeProto,
    ctx: &ImportCtx,
    lookup: OuterLookup,
    captures: &mut Vec<String>,
) -> Result<Attribute, OnnxError> {
    let name = a.name.clone().unwrap_or_default();
    let bad = |message: String| OnnxError::Tensor { tensor: name.clone(), message };
    if a.ref_attr_name.is_some() {
        return Err(bad("attribute references (ref_attr_name) are only valid inside functions".into()));
    }
    let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad("string is not valid UTF-8".into()));
    let kind = a.r#type.and_then(|t| AttributeType::try_from(t).ok()).unwrap_or(AttributeType::Undefined);
    let mut sub = |g: &GraphProto| -> Result<Arc<Network>, OnnxError> {
        // A subgraph may be ill-typed for the enclosing graph's static shapes and still be
        // valid: an If branch that is never taken for those shapes (AffineGrid's 2-D branch
        // on a 3-D size). If inference fails, import it again seeing only the dtypes of the
        // values it captures; a real error fails that way too and is reported as first found.
        let (net, caps) = match import_graph(g, ctx, Some(lookup)) {
            Ok(r) => r,
            Err(first) => {
                let weak = |n: &str| lookup(n).map(|t| t.map(|t| erase_shapes(&t)));
                import_graph(g, ctx, Some(&weak)).map_err(|_| first)?
            }
        };
        for c in caps {
            if !captures.contains(&c) {
                captures.push(c);
            }
        }
        Ok(Arc::new(net))
    };
    Ok(match kind {
        AttributeType::Float => Attribute::Float(a.f.unwrap_or(0.0)),
        AttributeType::Int => Attribute::Int(a.i.unwrap_or(0)),
        AttributeType::String => Attribute::String(utf8(a.s.as_deref().unwrap_or(&[]))?),
        AttributeType::Tensor => {
            let t = a.t.as_ref().ok_or_else(|| bad("tensor attribute without a tensor".into()))?;
            Attribute::Tensor(tensor_from_proto(t, ctx.base_dir)?)
        }
        AttributeType::Graph => {
            let g = a.g.as_ref().ok_or_else(|| bad("graph attribute without a graph".into()))?;
            Attribute::Graph(sub(g)?)
        }
        AttributeType::TypeProto => {
            let tp = a.tp.as_ref().ok_or_else(|| bad("type attribute without a type".into()))?;
            Attribute::Type(value_type(tp, &name)?)
        }
        AttributeType::Floats => Attribute::Floats(a.floats.clone()),
        AttributeType::Ints => Attribute::Ints(a.ints.clone()),
        AttributeType::Strings => Attribute::Strings(a.strings.iter().map(|s| utf8(s)).collect::<Result<_, _>>()?),
        AttributeType::Tensors => {
            Attribute::Tensors(a.tensors.iter().map(|t| tensor_from_proto(t, ctx.base_dir)).collect::<Result<_, _>>()?)
        }
        AttributeType::Graphs => Attribute::Graphs(a.graphs.iter().map(&mut sub).collect::<Result<_, _>>()?),
        AttributeType::SparseTensor | AttributeType::SparseTensors => {
            return Err(bad("sparse tensor attributes are not supported".into()))
        }
        AttributeType::TypeProtos => return Err(bad("type_protos attributes are not supported".into())),
        AttributeType::Undefined => return Err(bad("attribute has no type".into())),
    })
}

/// The type with every tensor shape made unknown (dtypes kept).
fn erase_shapes(t: &ValueType) -> ValueType {
    match t {
        ValueType::Tensor(t) => ValueType::Tensor(kiln_ir::TensorType::unranked(t.dtype)),
        ValueType::Sequence(e) => ValueType::Sequence(Box::new(erase_shapes(e))),
        ValueType::Optional(e) => ValueType::Optional(Box::new(erase_shapes(e))),
    }
}

/// TypeProto → ValueType, refusing element types kiln does not support.
pub fn value_type(tp: &TypeProto, what: &str) -> Result<ValueType, OnnxError> {
    let bad = |message: String| OnnxError::Tensor { tensor: what.to_string(), message };
    match &tp.value {
        Some(type_proto::Value::TensorType(t)) => {
            let dtype = DType::from_onnx_code(t.elem_type.unwrap_or(0))
                .map_err(|n| bad(format!("data type {n} is not supported by kiln")))?;
            let shape = match &t.shape {
                None => None,
                Some(s) => {
                    let mut dims = Vec::with_capacity(s.dim.len());
                    for (axis, d) in s.dim.iter().enumerate() {
                        use crate::proto::tensor_shape_proto::dimension::Value as D;
                        dims.push(match &d.value {
                            Some(D::DimValue(v)) if *v < 0 => {
                                return Err(bad(format!("dimension {axis} is negative ({v})")))
                            }
                            Some(D::DimValue(v)) if *v as u64 > MAX_ELEMENTS as u64 => {
                                return Err(bad(format!(
                                    "dimension {axis} is {v}, above kiln's limit of {MAX_ELEMENTS}"
                                )))
                            }
                            Some(D::DimValue(v)) => Dim::Known(*v as usize),
                            Some(D::DimParam(p)) if !p.is_empty() => Dim::Symbol(p.clone()),
                            _ => Dim::Unknown,
                        });
                    }
                    Some(dims)
                }
            };
            Ok(ValueType::Tensor(kiln_ir::TensorType { dtype, shape }))
        }
        Some(type_proto::Value::SequenceType(s)) => {
            let elem = s.elem_type.as_ref().ok_or_else(|| bad("sequence type without an element type".into()))?;
            Ok(ValueType::Sequence(Box::new(value_type(elem, what)?)))
        }
        Some(type_proto::Value::OptionalType(o)) => {
            let elem = o.elem_type.as_ref().ok_or_else(|| bad("optional type without an element type".into()))?;
            Ok(ValueType::Optional(Box::new(value_type(elem, what)?)))
        }
        Some(type_proto::Value::MapType(_)) => Err(bad("map types are not supported".into())),
        Some(type_proto::Value::SparseTensorType(_)) => Err(bad("sparse tensors are not supported".into())),
        Some(type_proto::Value::OpaqueType(_)) => Err(bad("opaque types are not supported".into())),
        None => Err(bad("value has no type".into())),
    }
}
