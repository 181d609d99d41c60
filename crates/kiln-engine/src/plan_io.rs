//! Engine ⇄ plan file: the engine graph goes into the metadata section (postcard), the weight
//! bytes into the weight section as one 64-byte aligned blob that loading maps, so the
//! weights' offsets inside it stay what the builder laid out.

use crate::backend::Backend;
use crate::engine::{EngineGraph, WeightBytes};
use crate::plan::{encode, write_plan, LoadedPlan, PlanExpectation, PlanHeader, WeightStore};
use crate::{Engine, EngineError};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Metadata larger than this is refused at load (a hostile length must not allocate).
const METADATA_LIMIT: usize = 1 << 30;

pub(crate) fn save(engine: &Engine, path: &Path) -> Result<(), EngineError> {
    let header = PlanHeader::new(engine.backend.name(), engine.backend.device(), engine.graph.build.config_hash);
    let metadata = encode(&engine.graph)?;
    write_plan(path, &header, &metadata, &[engine.weight_bytes.bytes()])?;
    tracing::info!(path = %path.display(), metadata = metadata.len(), weights = engine.weight_bytes.bytes().len(), "plan written");
    Ok(())
}

pub(crate) fn load(path: &Path, backend: Arc<dyn Backend>) -> Result<Engine, EngineError> {
    let start = Instant::now();
    let plan = LoadedPlan::open(path, &PlanExpectation::new(backend.name(), backend.device()))?;
    let graph: EngineGraph = plan.decode_metadata(METADATA_LIMIT)?;
    let store = plan.weights().clone();
    if store.len() > 1 {
        return Err(EngineError::Plan(crate::plan::PlanError::Corrupt {
            path: path.display().to_string(),
            message: format!("{} weight blobs, kiln writes one", store.len()),
        }));
    }
    let engine = Engine::assemble(graph, Arc::new(MappedWeights(store)), backend, &path.display().to_string())?;
    tracing::info!(path = %path.display(), ms = start.elapsed().as_secs_f64() * 1e3, "plan loaded");
    Ok(engine)
}

/// The weight section of a loaded plan (mapped from the file).
struct MappedWeights(WeightStore);

impl WeightBytes for MappedWeights {
    fn bytes(&self) -> &[u8] {
        self.0.get(0).unwrap_or(&[])
    }
}
