//! The plan file: header, metadata and 64-byte aligned weights, checksummed.
