
// ==== index kernels (see kernels/mod.rs: LIBRARY)
