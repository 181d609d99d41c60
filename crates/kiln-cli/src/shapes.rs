//! Parsing `NAME=1x3x224x224` flags.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;

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
