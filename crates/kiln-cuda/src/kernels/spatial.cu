
// ==== spatial kernels (see kernels/mod.rs: LIBRARY)
