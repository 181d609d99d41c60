//! The compact serde encoding (postcard) engines use for their metadata section.

use super::PlanError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A reasonable cap for [`decode`]'s `limit`: engine metadata (layers, tactics, memory plan)
/// is kilobytes to megabytes; weights belong in the weights section.
pub const DEFAULT_METADATA_LIMIT: usize = 256 << 20;

/// Serializes `value` with postcard (compact, not self-describing: the reader must decode the
/// same types, which the kiln version check in the plan header guarantees).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PlanError> {
    postcard::to_allocvec(value).map_err(|e| PlanError::Unwritable {
        path: "<metadata>".into(),
        reason: format!("cannot encode metadata: {e}"),
    })
}

/// Deserializes a value [`encode`] wrote, refusing input over `limit` bytes and trailing bytes.
/// Errors are [`PlanError::Corrupt`], with kiln-ir's message where it raised one (a tensor
/// whose shape lies about its data, an id out of range).
///
/// Memory: postcard reads lengths from the input, but serde preallocates at most about 1 MiB
/// per collection on a claimed length and then grows only with elements actually present, so
/// decoding allocates in proportion to `bytes.len()`, never to a length the input claims.
/// kiln-ir's own types also cap how deep subgraphs and types nest; engine types that nest
/// recursively should do the same.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, PlanError> {
    decode_named("<metadata>", bytes, limit)
}

pub(crate) fn decode_named<T: DeserializeOwned>(path: &str, bytes: &[u8], limit: usize) -> Result<T, PlanError> {
    if bytes.len() > limit {
        return Err(PlanError::corrupt(path, format!("metadata is {} bytes, over the limit of {limit}", bytes.len())));
    }
    kiln_ir::take_deserialize_error();
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| {
        let detail = kiln_ir::take_deserialize_error().map(|m| format!(": {m}")).unwrap_or_default();
        PlanError::corrupt(path, format!("metadata does not decode ({e}){detail}"))
    })?;
    if !rest.is_empty() {
        return Err(PlanError::corrupt(path, format!("{} bytes after the metadata", rest.len())));
    }
    Ok(value)
}
