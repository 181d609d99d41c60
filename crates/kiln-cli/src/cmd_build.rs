//! `kiln build`: ONNX → optimized engine → plan file, with a short summary (trtexec
//! `--saveEngine`).

use crate::model::{build_onnx, require_onnx, BuildFlags};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;

pub fn build(model: &Path, output: &Path, flags: &BuildFlags) -> Result<()> {
    require_onnx(model, "build takes an ONNX model (inspect, run or bench the plan instead)")?;
    let built = build_onnx(model, flags, &HashMap::new())?;
    built.engine.save(output).with_context(|| format!("writing plan {}", output.display()))?;
    built.write_summary(&mut std::io::stdout().lock(), model, Some(output))?;
    Ok(())
}
