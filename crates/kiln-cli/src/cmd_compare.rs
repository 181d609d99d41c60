//! `kiln compare`: the optimized engine against the unoptimized reference (kiln-cpu executing
//! the imported network) on the same random inputs (Polygraphy's `run --trt --onnxrt`), per
//! output and optionally per layer.

use crate::cmd_run::engine_inputs;
use crate::model::{build_onnx, require_onnx, BuildFlags};
use crate::shapes::parse_shapes;
use anyhow::{bail, Context, Result};
use kiln::{Network, Tensor, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;

pub struct CompareOptions {
    pub shapes: Vec<String>,
    pub per_layer: bool,
    pub rtol: f64,
    pub seed: u64,
}

/// Errors of a value against its reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Errors {
    /// max |a − b|.
    pub max_abs: f64,
    /// max |a − b| / max |b| (max |a − b| when the reference is all zeros).
    pub max_rel: f64,
}

/// Errors of `a` against reference `b`, or why they cannot be compared. NaN matches NaN; a NaN
/// on one side only, or infinities that differ, is an infinite error.
pub fn errors(a: &Tensor, b: &Tensor) -> Result<Errors, String> {
    if a.shape() != b.shape() {
        return Err(format!("shape {:?} vs reference {:?}", a.shape(), b.shape()));
    }
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let mut max_abs = 0.0f64;
    let mut scale = 0.0f64;
    for (x, y) in a.iter().zip(&b) {
        let d = if x == y || (x.is_nan() && y.is_nan()) { 0.0 } else { (x - y).abs() };
        let d = if d.is_nan() { f64::INFINITY } else { d };
        max_abs = max_abs.max(d);
        if y.is_finite() {
            scale = scale.max(y.abs());
        }
    }
    let max_rel = if scale > 0.0 { max_abs / scale } else { max_abs };
    Ok(Errors { max_abs, max_rel })
}

fn compare_values(a: &Value, b: &Value) -> Result<Errors, String> {
    match (a, b) {
        (Value::Tensor(a), Value::Tensor(b)) => errors(a, b),
        _ if a == b => Ok(Errors { max_abs: 0.0, max_rel: 0.0 }),
        _ => Err(format!("a {} vs reference {} that differ", a.kind_name(), b.kind_name())),
    }
}

/// `net` with every layer output also a network output (existing outputs keep their place
/// first), so that one reference run yields every intermediate value by name.
fn with_every_layer_output(net: &Network) -> Result<Network> {
    let mut full = net.clone();
    let mut marked: HashSet<_> = full.outputs().iter().copied().collect();
    for layer in net.layers() {
        for &id in layer.outputs.iter().flatten() {
            if marked.insert(id) {
                full.mark_output(id)?;
            }
        }
    }
    Ok(full)
}

pub fn compare(model: &Path, opts: &CompareOptions, flags: &BuildFlags) -> Result<()> {
    require_onnx(model, "compare needs the ONNX model: its reference is the unoptimized imported network")?;
    if opts.rtol.is_nan() || opts.rtol < 0.0 {
        bail!("--rtol must be a non-negative number");
    }
    let shapes = parse_shapes(&opts.shapes)?;
    let built = build_onnx(model, flags, &shapes)?;
    built.write_summary(&mut std::io::stdout().lock(), model, None)?;
    let engine = std::sync::Arc::new(built.engine);
    let net = built.network;
    let inputs = engine_inputs(&engine, &HashMap::new(), &shapes, opts.seed)?;
    for (name, value) in &inputs {
        if let Value::Tensor(t) = value {
            println!("input  {name}: {} {:?}", t.dtype(), t.shape());
        }
    }

    // Engine side.
    let mut ctx = engine.create_context();
    for (name, value) in &inputs {
        ctx.set_input(name, value)?;
    }
    let mut observed: Vec<Observed> = Vec::new();
    if opts.per_layer {
        ctx.execute_observed(&mut |el, values| {
            observed.push(Observed { layer: el.layer.name.clone(), op: el.layer.op.clone(), values })
        })
        .context("running the engine")?;
    } else {
        ctx.execute().context("running the engine")?;
    }
    let outputs = ctx.outputs()?;

    // Reference side.
    let reference_net = if opts.per_layer { with_every_layer_output(&net)? } else { net };
    let named: HashMap<String, Value> = inputs.iter().cloned().collect();
    let values = kiln::cpu::execute_named(&reference_net, named).context("running the reference")?;
    let reference: HashMap<String, Value> =
        reference_net.outputs().iter().map(|&id| reference_net.tensor(id).name.clone()).zip(values).collect();

    println!(
        "engine (opt level {}) vs the imported network on kiln-cpu; rel = max|engine − reference| / max|reference|",
        engine.graph().build.opt_level
    );
    if opts.per_layer {
        print_per_layer(&observed, &reference, opts.rtol);
    }
    let w = outputs.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0).max(6);
    println!("  {:<w$}  {:>12}  {:>12}", "output", "max abs", "max rel");
    let mut failed = Vec::new();
    let mut worst = 0.0f64;
    for (name, value) in &outputs {
        let Some(expected) = reference.get(name) else {
            println!("  {name:<w$}  not an output of the reference");
            failed.push(name.clone());
            continue;
        };
        match compare_values(value, expected) {
            Ok(e) => {
                let ok = e.max_rel <= opts.rtol;
                println!(
                    "  {name:<w$}  {:>12.4e}  {:>12.4e}  {}",
                    e.max_abs,
                    e.max_rel,
                    if ok { "ok" } else { "ABOVE rtol" }
                );
                worst = worst.max(e.max_rel);
                if !ok {
                    failed.push(name.clone());
                }
            }
            Err(why) => {
                println!("  {name:<w$}  mismatch: {why}");
                failed.push(name.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} output(s) differ beyond --rtol {:e}: {}", failed.len(), opts.rtol, failed.join(", "));
    }
    println!("PASSED: every output within rtol {:e} (largest relative error {worst:.3e})", opts.rtol);
    Ok(())
}

/// One engine layer's outputs, as `execute_observed` handed them over.
struct Observed {
    layer: String,
    op: String,
    values: Vec<(String, Value)>,
}

/// The errors of every engine layer output whose name the original network also has.
fn print_per_layer(observed: &[Observed], reference: &HashMap<String, Value>, rtol: f64) {
    let rows: Vec<(&str, &str, &str, Result<Errors, String>)> = observed
        .iter()
        .flat_map(|o| {
            o.values.iter().filter_map(move |(tensor, value)| {
                let expected = reference.get(tensor)?;
                Some((o.layer.as_str(), o.op.as_str(), tensor.as_str(), compare_values(value, expected)))
            })
        })
        .collect();
    let unmatched = observed.iter().filter(|o| o.values.iter().all(|(t, _)| !reference.contains_key(t))).count();
    let w_layer = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(5);
    let w_op = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(2);
    let w_tensor = rows.iter().map(|r| r.2.chars().count()).max().unwrap_or(0).max(6);
    println!("per layer ({} tensors compared):", rows.len());
    println!("  {:<w_layer$}  {:<w_op$}  {:<w_tensor$}  {:>12}  {:>12}", "layer", "op", "tensor", "max abs", "max rel");
    let mut first_bad: Option<&str> = None;
    for (layer, op, tensor, e) in &rows {
        match e {
            Ok(e) => {
                let bad = e.max_rel > rtol;
                if bad && first_bad.is_none() {
                    first_bad = Some(layer);
                }
                println!(
                    "  {layer:<w_layer$}  {op:<w_op$}  {tensor:<w_tensor$}  {:>12.4e}  {:>12.4e}{}",
                    e.max_abs,
                    e.max_rel,
                    if bad { "  ABOVE rtol" } else { "" }
                );
            }
            Err(why) => println!("  {layer:<w_layer$}  {op:<w_op$}  {tensor:<w_tensor$}  not comparable: {why}"),
        }
    }
    if unmatched > 0 {
        println!("  ({unmatched} engine layers have no output of the same name in the original network)");
    }
    if let Some(layer) = first_bad {
        println!("first layer above rtol: {layer}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>) -> Tensor {
        Tensor::from_vec(vec![v.len()], v).unwrap()
    }

    #[test]
    fn relative_error_is_scaled_by_the_largest_reference_value() {
        let e = errors(&t(vec![1.0, 2.5, -4.0]), &t(vec![1.0, 2.0, -4.0])).unwrap();
        assert_eq!(e.max_abs, 0.5);
        assert_eq!(e.max_rel, 0.125);
        let zeros = errors(&t(vec![0.0, 1e-9]), &t(vec![0.0, 0.0])).unwrap();
        assert!((zeros.max_rel - 1e-9).abs() < 1e-15, "all-zero reference: the absolute error");
        let nan = errors(&t(vec![f32::NAN, 1.0]), &t(vec![f32::NAN, 1.0])).unwrap();
        assert_eq!(nan.max_abs, 0.0);
        let one_nan = errors(&t(vec![f32::NAN]), &t(vec![1.0])).unwrap();
        assert!(one_nan.max_abs.is_infinite());
        assert!(errors(&t(vec![1.0]), &t(vec![1.0, 2.0])).is_err());
    }
}
