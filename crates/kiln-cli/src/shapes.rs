//! Parsing `NAME=1x3x224x224` flags: `--shape` of `kiln run`, and the optimization-profile flags
//! (`--shapes`, `--min-shapes`, `--opt-shapes`, `--max-shapes`) of the commands that build.

use anyhow::{bail, Context, Result};
use kiln::{Dim, OptimizationProfile, ShapeRange, ValueType};
use std::collections::{BTreeMap, HashMap};

/// Parse `NAME=AxBxC` items into name → dims.
pub fn parse_shapes(items: &[String]) -> Result<HashMap<String, Vec<usize>>> {
    let mut out = HashMap::new();
    for item in items {
        let (name, dims) =
            item.rsplit_once('=').with_context(|| format!("--shape '{item}': expected NAME=1x3x224x224"))?;
        let dims: Vec<usize> = if dims.is_empty() {
            Vec::new()
        } else {
            dims.split(['x', 'X', ','])
                .map(|d| {
                    d.trim().parse::<usize>().with_context(|| format!("--shape '{item}': '{d}' is not a dimension"))
                })
                .collect::<Result<_>>()?
        };
        if out.insert(name.to_string(), dims).is_some() {
            bail!("--shape given twice for '{name}'");
        }
    }
    Ok(out)
}

/// Split `NAME=VALUE`.
pub fn split_binding(item: &str, flag: &str) -> Result<(String, String)> {
    let (name, value) = item.rsplit_once('=').with_context(|| format!("{flag} '{item}': expected NAME=VALUE"))?;
    Ok((name.to_string(), value.to_string()))
}

/// The optimization-profile flags of `kiln build` (and of `bench`/`compare`/`inspect` when they
/// build from an ONNX file). Each flag takes `NAME=DIMS` items, comma-separated or repeated:
/// `--shapes a=1x3x32x32,b=1x7`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ProfileFlags {
    /// Static shapes: NAME=1x3x224x224,... (min = opt = max).
    #[arg(long = "shapes", value_name = "NAME=DIMS,...")]
    pub fixed: Vec<String>,
    /// Smallest shapes the engine must accept: NAME=DIMS,... (defaults to the opt shape).
    #[arg(long = "min-shapes", value_name = "NAME=DIMS,...")]
    pub min: Vec<String>,
    /// Shapes tactics are timed at: NAME=DIMS,... (defaults to the max shape, else the min shape).
    #[arg(long = "opt-shapes", value_name = "NAME=DIMS,...")]
    pub opt: Vec<String>,
    /// Largest shapes the engine must accept, which size the activation arena: NAME=DIMS,...
    /// (defaults to the opt shape).
    #[arg(long = "max-shapes", value_name = "NAME=DIMS,...")]
    pub max: Vec<String>,
}

/// `a=1x3,b=2x4` → [`a=1x3`, `b=2x4`]: a comma starts a new item only where the text after it
/// names an input (has an `=`), so `a=1,3` stays one item.
fn split_items(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        let mut current: Option<String> = None;
        for part in value.split(',') {
            match &mut current {
                Some(item) if !part.contains('=') => {
                    item.push(',');
                    item.push_str(part);
                }
                _ => {
                    out.extend(current.take());
                    current = Some(part.to_string());
                }
            }
        }
        out.extend(current);
    }
    out
}

/// Parse the items of one profile flag into name → dims, naming the flag in errors.
fn parse_profile_flag(flag: &str, values: &[String]) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut out = BTreeMap::new();
    for item in split_items(values) {
        let (name, dims) = item
            .rsplit_once('=')
            .with_context(|| format!("{flag} '{item}': expected NAME=DIMS such as input=1x3x224x224"))?;
        let name = name.trim();
        if name.is_empty() {
            bail!("{flag} '{item}': the input name is missing (expected NAME=DIMS)");
        }
        let dims: Vec<usize> = if dims.trim().is_empty() {
            Vec::new() // a scalar input
        } else {
            dims.split(['x', 'X', ','])
                .map(|d| {
                    d.trim().parse::<usize>().with_context(|| format!("{flag} '{item}': '{d}' is not a dimension"))
                })
                .collect::<Result<_>>()?
        };
        if out.insert(name.to_string(), dims).is_some() {
            bail!("{flag} gives '{name}' twice");
        }
    }
    Ok(out)
}

/// One input of the network the profile is for: its name and declared dimensions (`None`:
/// no declared shape).
pub struct DeclaredInput {
    pub name: String,
    pub dims: Option<Vec<Dim>>,
}

/// The declared tensor inputs of `net`.
pub fn declared_inputs(net: &kiln::Network) -> Vec<DeclaredInput> {
    net.inputs()
        .iter()
        .map(|&id| {
            let info = net.tensor(id);
            let dims = match &info.ty {
                Some(ValueType::Tensor(tt)) => tt.shape.clone(),
                _ => None,
            };
            DeclaredInput { name: info.name.clone(), dims }
        })
        .collect()
}

/// The optimization profile the flags describe, for a network with `inputs`.
///
/// * `--shapes NAME=D` fixes an input (min = opt = max = D); it cannot be combined with
///   `--min/--opt/--max-shapes` for the same input.
/// * Of `--min-shapes`, `--opt-shapes` and `--max-shapes`, the missing ones collapse onto the
///   given ones: opt defaults to max (else min), min and max default to opt. So `--max-shapes`
///   alone builds a static engine at that shape, and `--min-shapes x=1.. --max-shapes x=8..`
///   times tactics at the max shape.
/// * An input none of the flags names, with symbolic dimensions, gets the shape of `fallback`
///   (the `--shape` of `kiln bench`/`compare`) when there is one, else 1 for each symbolic
///   dimension, with a warning (as trtexec does). Fully static inputs need no flag.
///
/// Unknown input names, ranks that differ from the declared one, fixed dimensions given
/// another size, and min > opt > max are errors naming the flag and the input.
pub fn profile_from_flags(
    flags: &ProfileFlags,
    inputs: &[DeclaredInput],
    fallback: &HashMap<String, Vec<usize>>,
) -> Result<OptimizationProfile> {
    let fixed = parse_profile_flag("--shapes", &flags.fixed)?;
    let min = parse_profile_flag("--min-shapes", &flags.min)?;
    let opt = parse_profile_flag("--opt-shapes", &flags.opt)?;
    let max = parse_profile_flag("--max-shapes", &flags.max)?;
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    for (flag, map) in [("--shapes", &fixed), ("--min-shapes", &min), ("--opt-shapes", &opt), ("--max-shapes", &max)] {
        if let Some(unknown) = map.keys().find(|k| !names.contains(&k.as_str())) {
            bail!("{flag}: '{unknown}' is not an input of the model (inputs: {})", names.join(", "));
        }
    }
    let mut profile = OptimizationProfile::default();
    for input in inputs {
        let name = input.name.as_str();
        let ranged = [min.get(name), opt.get(name), max.get(name)];
        let range = if let Some(dims) = fixed.get(name) {
            if ranged.iter().any(Option::is_some) {
                bail!("'{name}' is given both --shapes and --min/--opt/--max-shapes; use one or the other");
            }
            ShapeRange::fixed(dims.clone())
        } else if ranged.iter().any(Option::is_some) {
            let [lo, mid, hi] = ranged;
            let opt = mid.or(hi).or(lo).expect("one is given").clone();
            ShapeRange { min: lo.unwrap_or(&opt).clone(), max: hi.unwrap_or(&opt).clone(), opt }
        } else if let Some(dims) = fallback.get(name) {
            ShapeRange::fixed(dims.clone())
        } else {
            match &input.dims {
                Some(dims) if dims.iter().any(|d| !matches!(d, Dim::Known(_))) => {
                    let shape: Vec<usize> = dims.iter().map(|d| if let Dim::Known(k) = d { *k } else { 1 }).collect();
                    eprintln!(
                        "warning: input '{name}' has symbolic dimensions ({}) and no shape was given; \
                         building for {} (use --shapes or --min/--opt/--max-shapes)",
                        kiln::ir::format_shape(dims),
                        format_dims(&shape)
                    );
                    ShapeRange::fixed(shape)
                }
                _ => continue, // static, or without a declared shape: nothing to add
            }
        };
        if let Some(dims) = &input.dims {
            check_against_declared(name, dims, &range)?;
        }
        check_order(name, &range)?;
        range.validate(name).map_err(|e| anyhow::anyhow!("shape range: {e}"))?;
        profile.inputs.insert(name.to_string(), range);
    }
    Ok(profile)
}

/// min ≤ opt ≤ max per dimension, with an error that shows the shapes.
fn check_order(name: &str, range: &ShapeRange) -> Result<()> {
    for (lo_what, lo, hi_what, hi) in [
        ("min", &range.min, "max", &range.max),
        ("min", &range.min, "opt", &range.opt),
        ("opt", &range.opt, "max", &range.max),
    ] {
        if let Some(axis) = lo.iter().zip(hi.iter()).position(|(a, b)| a > b) {
            bail!(
                "input '{name}': the {lo_what} shape {} is larger than the {hi_what} shape {} (dimension {axis}: {} > {})",
                format_dims(lo),
                format_dims(hi),
                lo[axis],
                hi[axis]
            );
        }
    }
    Ok(())
}

/// Rank and fixed dimensions of a range against the declared shape.
fn check_against_declared(name: &str, declared: &[Dim], range: &ShapeRange) -> Result<()> {
    for (what, dims) in [("min", &range.min), ("opt", &range.opt), ("max", &range.max)] {
        if dims.len() != declared.len() {
            bail!(
                "input '{name}': the {what} shape {} has rank {}, the model declares {} (rank {})",
                format_dims(dims),
                dims.len(),
                kiln::ir::format_shape(declared),
                declared.len()
            );
        }
        for (axis, (d, &n)) in declared.iter().zip(dims.iter()).enumerate() {
            if let Dim::Known(k) = d {
                if *k != n {
                    bail!(
                        "input '{name}': dimension {axis} is fixed at {k} in the model, the {what} shape {} has {n}",
                        format_dims(dims)
                    );
                }
            }
        }
    }
    Ok(())
}

/// `[1, 3, 224, 224]` → `1x3x224x224` (a scalar: `scalar`).
pub fn format_dims(dims: &[usize]) -> String {
    if dims.is_empty() {
        return "scalar".into();
    }
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<DeclaredInput> {
        vec![
            DeclaredInput {
                name: "image".into(),
                dims: Some(vec![Dim::Symbol("batch".into()), Dim::Known(3), Dim::Known(8), Dim::Known(8)]),
            },
            DeclaredInput { name: "scale".into(), dims: Some(vec![Dim::Known(1)]) },
        ]
    }

    fn flags(shapes: &[&str], min: &[&str], opt: &[&str], max: &[&str]) -> ProfileFlags {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        ProfileFlags { fixed: v(shapes), min: v(min), opt: v(opt), max: v(max) }
    }

    #[test]
    fn items_split_on_commas_that_start_a_name() {
        assert_eq!(split_items(&["a=1x3,b=2x4".into(), "c=5".into()]), ["a=1x3", "b=2x4", "c=5"]);
        assert_eq!(split_items(&["a=1,3,b=2".into()]), ["a=1,3", "b=2"]);
    }

    #[test]
    fn static_shapes_and_collapsing_ranges() {
        let none = HashMap::new();
        let p = profile_from_flags(&flags(&["image=2x3x8x8"], &[], &[], &[]), &inputs(), &none).unwrap();
        assert_eq!(p.inputs["image"], ShapeRange::fixed(vec![2, 3, 8, 8]));
        assert!(!p.inputs.contains_key("scale"), "static inputs need no range");

        let p = profile_from_flags(&flags(&[], &["image=1x3x8x8"], &[], &["image=8x3x8x8"]), &inputs(), &none).unwrap();
        let r = &p.inputs["image"];
        assert_eq!((r.min[0], r.opt[0], r.max[0]), (1, 8, 8), "opt defaults to max");

        let p = profile_from_flags(&flags(&[], &[], &["image=4x3x8x8"], &[]), &inputs(), &none).unwrap();
        assert_eq!(p.inputs["image"], ShapeRange::fixed(vec![4, 3, 8, 8]), "min and max default to opt");

        let p = profile_from_flags(&flags(&[], &["image=2x3x8x8"], &[], &[]), &inputs(), &none).unwrap();
        assert_eq!(p.inputs["image"], ShapeRange::fixed(vec![2, 3, 8, 8]), "opt defaults to min without a max");
    }

    #[test]
    fn unnamed_symbolic_inputs_use_the_run_shape_or_ones() {
        let p = profile_from_flags(&ProfileFlags::default(), &inputs(), &HashMap::new()).unwrap();
        assert_eq!(p.inputs["image"], ShapeRange::fixed(vec![1, 3, 8, 8]));
        let run: HashMap<String, Vec<usize>> = [("image".to_string(), vec![5, 3, 8, 8])].into();
        let p = profile_from_flags(&ProfileFlags::default(), &inputs(), &run).unwrap();
        assert_eq!(p.inputs["image"], ShapeRange::fixed(vec![5, 3, 8, 8]));
    }

    #[test]
    fn bad_profiles_name_the_problem() {
        let none = HashMap::new();
        let err = |f: ProfileFlags| profile_from_flags(&f, &inputs(), &none).unwrap_err().to_string();
        let e = err(flags(&["nope=1x3"], &[], &[], &[]));
        assert!(e.contains("--shapes") && e.contains("'nope'") && e.contains("image, scale"), "{e}");
        let e = err(flags(&[], &["image=8x3x8x8"], &[], &["image=2x3x8x8"]));
        assert!(e.contains("min shape 8x3x8x8 is larger than the max shape 2x3x8x8"), "{e}");
        let e = err(flags(&[], &["image=4x3x8x8"], &["image=2x3x8x8"], &["image=8x3x8x8"]));
        assert!(e.contains("min shape 4x3x8x8 is larger than the opt shape 2x3x8x8"), "{e}");
        let e = err(flags(&["image=1x3x8"], &[], &[], &[]));
        assert!(e.contains("rank"), "{e}");
        let e = err(flags(&["image=1x4x8x8"], &[], &[], &[]));
        assert!(e.contains("fixed at 3"), "{e}");
        let e = err(flags(&["image=1x3x8x8"], &[], &[], &["image=2x3x8x8"]));
        assert!(e.contains("both"), "{e}");
        let e = err(flags(&["image=1xqx8x8"], &[], &[], &[]));
        assert!(e.contains("'q' is not a dimension"), "{e}");
        let e = err(flags(&["image1x3"], &[], &[], &[]));
        assert!(e.contains("NAME=DIMS"), "{e}");
    }
}
