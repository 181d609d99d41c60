//! The reference tactic: kiln-cpu's kernel for the op, run on values materialized from the
//! arena, its results copied back into the arena. Every op has it, so it is the fallback for
//! layers no specialised tactic covers.

use crate::backend::{LayerIo, LayerKernel};
use kiln_ir::{Layer, Value};
use std::borrow::Cow;
use std::collections::HashMap;

pub const TACTIC: &str = "reference";

pub struct ReferenceKernel {
    layer: Layer,
}

impl ReferenceKernel {
    pub fn new(layer: &Layer) -> Result<Self, String> {
        if kiln_cpu::kernel(&layer.op).is_none() {
            return Err(format!("no CPU kernel for op {}", layer.op));
        }
        Ok(ReferenceKernel { layer: layer.clone() })
    }
}

impl LayerKernel for ReferenceKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let args: Vec<Option<Cow<Value>>> =
            io.inputs.iter().map(|a| a.as_ref().map(|a| a.value()).transpose()).collect::<Result<_, _>>()?;
        let refs: Vec<Option<&Value>> = args.iter().map(|a| a.as_deref()).collect();
        let outputs = if io.captures.is_empty() {
            kiln_cpu::eval_layer(&self.layer, &refs)
        } else {
            let captures: HashMap<String, Value> = io
                .captures
                .iter()
                .map(|(n, a)| Ok((n.to_string(), a.value()?.into_owned())))
                .collect::<Result<_, String>>()?;
            kiln_cpu::eval_layer_with_captures(&self.layer, &refs, &captures)
        }
        .map_err(|e| match e {
            kiln_cpu::CpuError::Layer { message, .. } => message,
            other => other.to_string(),
        })?;
        for (i, v) in outputs.into_iter().enumerate() {
            io.set_output_value(i, v);
        }
        Ok(())
    }
}
