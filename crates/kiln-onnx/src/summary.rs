//! A quick look at a model without importing it: what `kiln info` shows, including the ops
//! kiln cannot import (so a user sees every unsupported op at once, not just the first).

use crate::importers::importer_for;
use crate::proto::{GraphProto, ModelProto};
use crate::{value_type, OnnxError};
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct ModelSummary {
    pub producer: String,
    pub ir_version: i64,
    /// (domain, version) pairs; the default domain is shown as "ai.onnx".
    pub opsets: Vec<(String, i64)>,
    /// (name, type as text) of each graph input that is not an initializer.
    pub inputs: Vec<(String, String)>,
    pub outputs: Vec<(String, String)>,
    /// Op type → node count, subgraphs included.
    pub op_counts: BTreeMap<String, usize>,
    /// Ops kiln cannot import: op type → (node count, reason).
    pub unsupported: BTreeMap<String, (usize, String)>,
    /// Elements in initializers (subgraphs included).
    pub parameters: u64,
}

pub fn summarize_file(path: impl AsRef<Path>) -> Result<ModelSummary, OnnxError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io { path: path.to_path_buf(), source })?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| OnnxError::Decode { path: path.to_path_buf(), message: e.to_string() })?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Decode { path: path.to_path_buf(), message: "the model has no graph".into() })?;
    let mut opsets = Vec::new();
    let mut versions = BTreeMap::new();
    for o in &model.opset_import {
        let d = o.domain.clone().unwrap_or_default();
        let d = if d.is_empty() || d == "ai.onnx" { String::new() } else { d };
        versions.insert(d.clone(), o.version.unwrap_or(0));
        opsets.push((if d.is_empty() { "ai.onnx".to_string() } else { d }, o.version.unwrap_or(0)));
    }
    let mut s = ModelSummary {
        producer: format!(
            "{} {}",
            model.producer_name.clone().unwrap_or_default(),
            model.producer_version.clone().unwrap_or_default()
        )
        .trim()
        .to_string(),
        ir_version: model.ir_version.unwrap_or(0),
        opsets,
        inputs: Vec::new(),
        outputs: Vec::new(),
        op_counts: BTreeMap::new(),
        unsupported: BTreeMap::new(),
        parameters: 0,
    };
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().filter_map(|i| i.name.as_deref()).collect();
    let show_type = |v: &crate::proto::ValueInfoProto| -> String {
        let name = v.name.clone().unwrap_or_default();
        match &v.r#type {
            Some(tp) => match value_type(tp, &name) {
                Ok(t) => t.to_string(),
                Err(e) => format!("unsupported ({e})"),
            },
            None => "untyped".into(),
        }
    };
    for i in &graph.input {
        let name = i.name.clone().unwrap_or_default();
        if !inits.contains(name.as_str()) {
            s.inputs.push((name, show_type(i)));
        }
    }
    for o in &graph.output {
        s.outputs.push((o.name.clone().unwrap_or_default(), show_type(o)));
    }
    walk(graph, &versions, &mut s);
    Ok(s)
}

fn walk(g: &GraphProto, versions: &BTreeMap<String, i64>, s: &mut ModelSummary) {
    s.parameters += g.initializer.iter().map(|t| t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>()).sum::<u64>();
    for n in &g.node {
        let op = n.op_type.clone().unwrap_or_default();
        *s.op_counts.entry(op.clone()).or_default() += 1;
        let domain = n.domain.clone().unwrap_or_default();
        let domain = if domain == "ai.onnx" { String::new() } else { domain };
        let opset = versions.get(&domain).copied().unwrap_or(1);
        if let Err(reason) = importer_for(&domain, &op, opset) {
            let e = s.unsupported.entry(op).or_insert((0, reason.unwrap_or_else(|| "no importer".into())));
            e.0 += 1;
        }
        for a in &n.attribute {
            for sub in a.g.iter().chain(a.graphs.iter()) {
                walk(sub, versions, s);
            }
        }
    }
}
