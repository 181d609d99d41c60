//! `kiln run`: bind inputs (from .npy or seeded random values), run an ONNX model or a plan,
//! write the outputs as .npy.

use crate::model::{is_plan, load_plan};
use crate::npy::{read_npy, write_npy};
use crate::shapes::{format_dims, parse_shapes, split_binding};
use anyhow::{bail, Context, Result};
use kiln::ir::TensorData;
use kiln::{DType, Dim, Engine, Tensor, Value, ValueType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub fn run(
    model: &Path,
    input_flags: &[String],
    shape_flags: &[String],
    output_dir: &Path,
    seed: u64,
    opt_level: u8,
) -> Result<()> {
    if is_plan(model)? {
        if opt_level > 0 {
            eprintln!(
                "warning: {} is a plan, already optimized when it was built; --opt-level is ignored",
                model.display()
            );
        }
        return run_plan(model, input_flags, shape_flags, output_dir, seed);
    }
    let t0 = Instant::now();
    let m = kiln::load_onnx(model)?;
    tracing::info!(layers = m.network.layers().len(), ms = t0.elapsed().as_millis() as u64, "imported");
    let net = if opt_level > 0 {
        let (net, report) = kiln::optimize(m.network)?;
        println!(
            "optimized: {} → {} layers in {} rounds ({})",
            report.layers_before,
            report.layers_after,
            report.rounds,
            report.changes.iter().map(|(p, n)| format!("{p} ×{n}")).collect::<Vec<_>>().join(", ")
        );
        net
    } else {
        m.network
    };
    let net = &net;
    let mut files: HashMap<String, PathBuf> = HashMap::new();
    for item in input_flags {
        let (name, file) = split_binding(item, "--input")?;
        files.insert(name, file.into());
    }
    let shapes = parse_shapes(shape_flags)?;
    let names: Vec<&str> = net.inputs().iter().map(|&id| net.tensor(id).name.as_str()).collect();
    for name in files.keys().chain(shapes.keys()) {
        if !names.contains(&name.as_str()) {
            bail!("'{name}' is not an input of {} (inputs: {})", model.display(), names.join(", "));
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut inputs = HashMap::new();
    for &id in net.inputs() {
        let info = net.tensor(id);
        let value = if let Some(file) = files.get(&info.name) {
            Value::Tensor(read_npy(file).with_context(|| format!("input '{}'", info.name))?)
        } else {
            let Some(ValueType::Tensor(tt)) = &info.ty else {
                bail!("input '{}' is not a plain tensor; give it with --input", info.name);
            };
            let dims = concrete_dims(&info.name, tt.shape.as_deref(), shapes.get(&info.name))?;
            Value::Tensor(random_tensor(tt.dtype, dims, &mut rng)?)
        };
        if let Value::Tensor(t) = &value {
            println!("input  {}: {} {:?}", info.name, t.dtype(), t.shape());
        }
        inputs.insert(info.name.clone(), value);
    }
    let t1 = Instant::now();
    let outputs = kiln::run(net, inputs)?;
    let elapsed = t1.elapsed();
    write_outputs(output_dir, &outputs)?;
    println!("ran in {:.2} ms on the CPU", elapsed.as_secs_f64() * 1e3);
    Ok(())
}

/// Run a plan: inputs from .npy files or seeded random values (at `--shape`, else the
/// profile's opt shape), outputs written as for an ONNX model.
fn run_plan(model: &Path, input_flags: &[String], shape_flags: &[String], output_dir: &Path, seed: u64) -> Result<()> {
    let engine = Arc::new(load_plan(model)?);
    let mut files: HashMap<String, PathBuf> = HashMap::new();
    for item in input_flags {
        let (name, file) = split_binding(item, "--input")?;
        files.insert(name, file.into());
    }
    let shapes = parse_shapes(shape_flags)?;
    let inputs = engine_inputs(&engine, &files, &shapes, seed)?;
    for (name, value) in &inputs {
        if let Value::Tensor(t) = value {
            println!("input  {name}: {} {:?}", t.dtype(), t.shape());
        }
    }
    let mut ctx = engine.create_context();
    for (name, value) in &inputs {
        ctx.set_input(name, value)?;
    }
    let t1 = Instant::now();
    ctx.execute()?;
    let elapsed = t1.elapsed();
    write_outputs(output_dir, &ctx.outputs()?)?;
    println!(
        "ran in {:.2} ms on the CPU (engine: {} layers)",
        elapsed.as_secs_f64() * 1e3,
        engine.graph().layers.len()
    );
    Ok(())
}

/// Every output as `<dir>/<name>.npy`, with a line each.
fn write_outputs(output_dir: &Path, outputs: &[(String, Value)]) -> Result<()> {
    std::fs::create_dir_all(output_dir).with_context(|| format!("creating {}", output_dir.display()))?;
    for (name, value) in outputs {
        let Value::Tensor(t) = value else {
            println!("output {name}: a {} (not written)", value.kind_name());
            continue;
        };
        let path = output_dir.join(format!("{}.npy", sanitize(name)));
        write_npy(&path, t)?;
        println!("output {name}: {} {:?} {}  -> {}", t.dtype(), t.shape(), summary(t), path.display());
    }
    Ok(())
}

/// Values for every input of `engine`, in binding order: read from `files`, else seeded random
/// values at the shape in `shapes`, else at the profile's opt shape (an input's declared shape
/// when it is static). Names in `files` or `shapes` that are not inputs are errors.
pub fn engine_inputs(
    engine: &Engine,
    files: &HashMap<String, PathBuf>,
    shapes: &HashMap<String, Vec<usize>>,
    seed: u64,
) -> Result<Vec<(String, Value)>> {
    let names = engine.input_names();
    for name in files.keys().chain(shapes.keys()) {
        if !names.contains(&name.as_str()) {
            bail!("'{name}' is not an input of the engine (inputs: {})", names.join(", "));
        }
    }
    let profile = &engine.graph().profile;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let value = if let Some(file) = files.get(name) {
            Value::Tensor(read_npy(file).with_context(|| format!("input '{name}'"))?)
        } else {
            let Some(ValueType::Tensor(tt)) = engine.tensor_type(name) else {
                bail!("input '{name}' is not a plain tensor; give it with --input");
            };
            let dims = match (shapes.get(name), profile.get(name)) {
                (Some(given), Some(range)) if !range.contains(given) => bail!(
                    "--shape {name}={}: outside the engine's profile (min {}, max {}); rebuild with a wider range",
                    format_dims(given),
                    format_dims(&range.min),
                    format_dims(&range.max)
                ),
                (Some(given), _) => given.clone(),
                (None, Some(range)) => range.opt.clone(),
                (None, None) => concrete_dims(name, tt.shape.as_deref(), None)?,
            };
            Value::Tensor(random_tensor(tt.dtype, dims, &mut rng)?)
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// Output file stem: every character outside [A-Za-z0-9._-] becomes '_'.
pub fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

fn concrete_dims(name: &str, declared: Option<&[Dim]>, given: Option<&Vec<usize>>) -> Result<Vec<usize>> {
    if let Some(g) = given {
        if let Some(d) = declared {
            if d.len() != g.len() {
                bail!("--shape for '{name}' has rank {}, the model declares rank {}", g.len(), d.len());
            }
            for (i, (dd, &gd)) in d.iter().zip(g).enumerate() {
                if let Dim::Known(k) = dd {
                    if *k != gd {
                        bail!("--shape for '{name}': dimension {i} must be {k}, got {gd}");
                    }
                }
            }
        }
        return Ok(g.clone());
    }
    let Some(d) = declared else {
        bail!("input '{name}' has no declared shape; give one with --shape {name}=...");
    };
    Ok(d.iter()
        .map(|dim| match dim {
            Dim::Known(k) => *k,
            other => {
                tracing::warn!("input '{name}': dimension '{other}' set to 1 (use --shape to choose)");
                1
            }
        })
        .collect())
}

/// Seeded random values: floats in [-1, 1), integers in [0, 2) (0 and 1 are valid for every
/// index-like input: token ids, BERT's token types with a 2-row table, masks), random bools.
pub fn random_tensor(dtype: DType, shape: Vec<usize>, rng: &mut StdRng) -> Result<Tensor> {
    let n = kiln::ir::checked_numel(&shape)?;
    let floats: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let data = match dtype {
        DType::Bool => TensorData::Bool((0..n).map(|_| rng.random_bool(0.5)).collect()),
        d if d.is_float() => cast_from_f64(d, &floats),
        d => cast_from_f64(d, &floats.iter().map(|x| (x + 1.0).floor()).collect::<Vec<_>>()),
    };
    Ok(Tensor::new(shape, data)?)
}

fn cast_from_f64(dtype: DType, v: &[f64]) -> TensorData {
    use kiln::ir::Element;
    fn conv<T: Element>(v: &[f64]) -> TensorData {
        T::into_data(v.iter().map(|&x| T::from_f64(x)).collect())
    }
    match dtype {
        DType::F32 => conv::<f32>(v),
        DType::F64 => conv::<f64>(v),
        DType::F16 => conv::<kiln::ir::f16>(v),
        DType::BF16 => conv::<kiln::ir::bf16>(v),
        DType::I8 => conv::<i8>(v),
        DType::U8 => conv::<u8>(v),
        DType::I16 => conv::<i16>(v),
        DType::U16 => conv::<u16>(v),
        DType::I32 => conv::<i32>(v),
        DType::U32 => conv::<u32>(v),
        DType::I64 => conv::<i64>(v),
        DType::U64 => conv::<u64>(v),
        DType::Bool => conv::<bool>(v),
    }
}

/// min / max / mean and the first values.
fn summary(t: &Tensor) -> String {
    let v = t.to_f64_vec();
    if v.is_empty() {
        return "(empty)".into();
    }
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let head: Vec<String> = v.iter().take(5).map(|x| format!("{x:.5}")).collect();
    format!("min {min:.5} max {max:.5} mean {mean:.5} [{}{}]", head.join(", "), if v.len() > 5 { ", …" } else { "" })
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_names_are_sanitized() {
        assert_eq!(super::sanitize("out/logits:0 x"), "out_logits_0_x");
        assert_eq!(super::sanitize("a.b-c_d"), "a.b-c_d");
    }
}
