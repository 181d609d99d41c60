//! Engine ⇄ plan file: the graph goes into the metadata section, the weight bytes into the
//! aligned weight section that loading maps.

use crate::backend::Backend;
use crate::{Engine, EngineError};
use std::path::Path;
use std::sync::Arc;

pub(crate) fn save(_engine: &Engine, path: &Path) -> Result<(), EngineError> {
    Err(EngineError::Plan(crate::plan::PlanError::Corrupt(format!("{}: saving plans lands with the plan format", path.display()))))
}

pub(crate) fn load(path: &Path, _backend: Arc<dyn Backend>) -> Result<Engine, EngineError> {
    Err(EngineError::Plan(crate::plan::PlanError::Corrupt(format!("{}: loading plans lands with the plan format", path.display()))))
}
