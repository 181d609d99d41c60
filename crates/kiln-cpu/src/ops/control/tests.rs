//! Unit tests for the control kernels.
