
// ==== sequence kernels (see kernels/mod.rs: LIBRARY)
