//! Shape specialization: the network with (some of) its symbolic input dimensions replaced by
//! numbers, types inferred again and the shape arithmetic that became constant folded.
//!
//! The builder specializes three times: every dimension whose profile range is a single value
//! (the network it optimizes), and all dimensions at the profile's opt and max shapes (where
//! tactics are timed and the arena is sized).

use crate::config::ShapeRange;
use crate::EngineError;
use kiln_ir::{Dim, Network, TensorType, ValueType};
use kiln_opt::passes::constant_folding::ConstantFolding;
use kiln_opt::{Pass, Rebuilder};
use std::collections::{BTreeMap, HashMap};

/// Which shape of each range to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Only dimensions with min == max.
    Fixed,
    Opt,
    Max,
}

/// `net` with input dimensions replaced per `ranges` and `pick`, then constant-folded so that
/// Shape → Gather → Concat → Reshape chains of now-static tensors disappear.
pub fn specialize(net: &Network, ranges: &BTreeMap<String, ShapeRange>, pick: Pick) -> Result<Network, EngineError> {
    let retype = |name: &str, ty: Option<&ValueType>| -> Option<ValueType> {
        let ty = ty?;
        let (Some(range), ValueType::Tensor(TensorType { dtype, shape: Some(shape) })) = (ranges.get(name), ty) else {
            return Some(ty.clone());
        };
        let dims = shape
            .iter()
            .enumerate()
            .map(|(axis, d)| {
                let (lo, hi) = (range.min[axis], range.max[axis]);
                match pick {
                    Pick::Fixed if lo == hi => Dim::Known(lo),
                    Pick::Fixed => d.clone(),
                    Pick::Opt => Dim::Known(range.opt[axis]),
                    Pick::Max => Dim::Known(hi),
                }
            })
            .collect();
        Some(ValueType::tensor(*dtype, dims))
    };
    let build = || -> Result<Network, kiln_ir::IrError> {
        let mut rb = Rebuilder::with_input_types(net, retype)?;
        for layer in net.layers() {
            rb.copy_layer(layer)?;
        }
        rb.finish()
    };
    let specialized = build().map_err(|e| EngineError::Profile(format!("specializing input shapes: {e}")))?;
    fold_constants(specialized)
}

/// Constant folding to a fixpoint (a folded Shape exposes the Gather after it, and so on).
pub fn fold_constants(mut net: Network) -> Result<Network, EngineError> {
    let folding = ConstantFolding::default();
    for _ in 0..64 {
        match folding.run(&net).map_err(|e| EngineError::Profile(format!("folding shape arithmetic: {e}")))? {
            Some(next) => net = next,
            None => break,
        }
    }
    Ok(net)
}

/// The profile for every input of `net`: ranges given by the caller, checked against the
/// declared shapes, and a fixed range for each fully static input. An input with symbolic
/// dimensions and no range is an error that lists what to pass.
pub fn resolve_profile(
    net: &Network,
    given: &BTreeMap<String, ShapeRange>,
) -> Result<BTreeMap<String, ShapeRange>, EngineError> {
    let names: HashMap<&str, ()> = net.inputs().iter().map(|&id| (net.tensor(id).name.as_str(), ())).collect();
    if let Some(unknown) = given.keys().find(|k| !names.contains_key(k.as_str())) {
        let all: Vec<&str> = names.keys().copied().collect();
        return Err(EngineError::Profile(format!(
            "the profile names '{unknown}', which is not an input (inputs: {all:?})"
        )));
    }
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for &id in net.inputs() {
        let info = net.tensor(id);
        let Some(ValueType::Tensor(TensorType { shape: Some(shape), .. })) = &info.ty else {
            if let Some(r) = given.get(&info.name) {
                r.validate(&info.name).map_err(EngineError::Profile)?;
                out.insert(info.name.clone(), r.clone());
            }
            continue;
        };
        match given.get(&info.name) {
            Some(r) => {
                r.validate(&info.name).map_err(EngineError::Profile)?;
                if r.min.len() != shape.len() {
                    return Err(EngineError::Profile(format!(
                        "input '{}' has rank {} ({}), the profile gives rank {}",
                        info.name,
                        shape.len(),
                        kiln_ir::format_shape(shape),
                        r.min.len()
                    )));
                }
                for (axis, d) in shape.iter().enumerate() {
                    if let Dim::Known(k) = d {
                        if r.min[axis] != *k || r.max[axis] != *k {
                            return Err(EngineError::Profile(format!(
                                "input '{}' dimension {axis} is fixed at {k}, the profile asks for {}..{}",
                                info.name, r.min[axis], r.max[axis]
                            )));
                        }
                    }
                }
                out.insert(info.name.clone(), r.clone());
            }
            None => match kiln_ir::concrete(shape) {
                Some(dims) => {
                    out.insert(info.name.clone(), ShapeRange::fixed(dims));
                }
                None => missing.push(format!("{} {}", info.name, kiln_ir::format_shape(shape))),
            },
        }
    }
    if !missing.is_empty() {
        return Err(EngineError::Profile(format!(
            "inputs with symbolic dimensions need a shape range (--shapes, or --min-shapes/--opt-shapes/--max-shapes): {}",
            missing.join(", ")
        )));
    }
    check_symbols_agree(net, &out)?;
    Ok(out)
}

/// A symbolic dimension (`batch`) shared by several inputs must get the same range in each.
fn check_symbols_agree(net: &Network, ranges: &BTreeMap<String, ShapeRange>) -> Result<(), EngineError> {
    let mut seen: HashMap<String, (usize, usize, usize, String)> = HashMap::new();
    for &id in net.inputs() {
        let info = net.tensor(id);
        let (Some(ValueType::Tensor(TensorType { shape: Some(shape), .. })), Some(r)) =
            (&info.ty, ranges.get(&info.name))
        else {
            continue;
        };
        for (axis, d) in shape.iter().enumerate() {
            let Dim::Symbol(sym) = d else { continue };
            let this = (r.min[axis], r.opt[axis], r.max[axis]);
            match seen.get(sym) {
                Some((lo, mid, hi, first)) if (*lo, *mid, *hi) != this => {
                    return Err(EngineError::Profile(format!(
                        "dimension '{sym}' is {lo}/{mid}/{hi} (min/opt/max) for input '{first}' but {}/{}/{} for '{}'",
                        this.0, this.1, this.2, info.name
                    )));
                }
                Some(_) => {}
                None => {
                    seen.insert(sym.clone(), (this.0, this.1, this.2, info.name.clone()));
                }
            }
        }
    }
    Ok(())
}
