//! Matrix products with a fused epilogue through cuBLASLt: `Y = act(alpha · A·B + R + bias)`
//! in one kernel, where R (a residual) and the per-column bias are optional and the activation
//! is none or ReLU — the epilogues cuBLASLt computes exactly as kiln's epilogue kernel does
//! (its GELU is the tanh approximation, so GELU stays in kiln's kernel). The same row-major
//! trick as blas.rs: cuBLASLt computes the column-major transpose, where kiln's per-column
//! bias is cuBLASLt's per-row bias.

use crate::error::{cuda_err, CudaResult};
use crate::kernels::Storage;
use cudarc::cublaslt::{result as lt, sys};
use std::collections::HashMap;
use std::ffi::c_void;

/// The alignment the chosen algorithms may assume of every operand (kiln's arena slots are
/// 64-byte aligned; operands that are not run through cuBLAS instead).
const OPERAND_ALIGN: u64 = 64;

/// What a product looks like; each distinct one gets its descriptors and algorithm once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LtShape {
    pub storage: Storage,
    pub tf32: bool,
    /// Row-major M, N, K.
    pub mnk: (usize, usize, usize),
    pub trans_a: bool,
    pub trans_b: bool,
    /// Row-major leading dimensions of A, B and Y (and the residual).
    pub ld: (usize, usize, usize),
    pub bias: bool,
    pub relu: bool,
    pub residual: bool,
}

/// Descriptors and the chosen algorithm of one shape.
struct LtPlan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3], // the column-major A (kiln's B), B (kiln's A), C/D
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: created by `LtPlan::new`, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// A cuBLASLt handle with its plans, for one session's stream and workspace.
pub(crate) struct BlasLt {
    handle: sys::cublasLtHandle_t,
    stream: cudarc::driver::sys::CUstream,
    workspace: (u64, usize),
    /// `None`: cuBLASLt has no algorithm for the shape (the caller uses cuBLAS + kiln's epilogue).
    plans: HashMap<LtShape, Option<LtPlan>>,
}

// SAFETY: used by one session at a time, like `Blas`.
unsafe impl Send for BlasLt {}

impl BlasLt {
    /// `None` where cuBLASLt cannot be loaded or initialized (products then use cuBLAS).
    pub fn new(stream: cudarc::driver::sys::CUstream, workspace: u64, workspace_bytes: usize) -> Option<BlasLt> {
        // SAFETY: probes whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            tracing::debug!("cuBLASLt is not available; products use cuBLAS and kiln's epilogue kernel");
            return None;
        }
        let handle = lt::create_handle().ok()?;
        Some(BlasLt { handle, stream, workspace: (workspace, workspace_bytes), plans: HashMap::new() })
    }

    /// Run the product of `shape` on `a`, `b` into `y` with the bias and residual given by
    /// address (0 where absent). `Ok(false)`: cuBLASLt has no algorithm for it; nothing ran.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        shape: LtShape,
        alpha: f32,
        a: u64,
        b: u64,
        bias: u64,
        residual: u64,
        y: u64,
    ) -> CudaResult<bool> {
        if [a, b, bias, residual, y].iter().any(|p| p % OPERAND_ALIGN != 0) {
            return Ok(false);
        }
        if !self.plans.contains_key(&shape) {
            let plan = LtPlan::new(self.handle, &shape, self.workspace.1);
            if let Err(why) = &plan {
                tracing::debug!(?shape, %why, "no cuBLASLt algorithm; using cuBLAS and the epilogue kernel");
            }
            self.plans.insert(shape, plan.ok());
        }
        let Some(plan) = self.plans.get(&shape).and_then(Option::as_ref) else { return Ok(false) };
        let attr = sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER;
        if shape.bias {
            let ptr = bias as *const c_void;
            // SAFETY: a live descriptor; the attribute is a device pointer, passed by address.
            unsafe {
                lt::set_matmul_desc_attribute(plan.desc, attr, (&ptr as *const *const c_void).cast(), 8)
                    .map_err(cuda_err("setting the cuBLASLt bias"))?
            };
        }
        let beta = if shape.residual { 1.0f32 } else { 0.0 };
        let c = if shape.residual { residual } else { y };
        // SAFETY: the operands address device buffers of the shapes the layouts describe
        // (the caller sized them); alpha/beta and the algorithm live across the call.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                b as *const c_void,
                plan.layouts[0],
                a as *const c_void,
                plan.layouts[1],
                c as *const c_void,
                plan.layouts[2],
                y as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                self.workspace.0 as *mut c_void,
                self.workspace.1,
                self.stream as sys::cudaStream_t,
            )
        }
        .map_err(cuda_err("cublasLtMatmul"))?;
        Ok(true)
    }
}

impl LtPlan {
    fn new(handle: sys::cublasLtHandle_t, s: &LtShape, workspace_bytes: usize) -> CudaResult<LtPlan> {
        let dt = match s.storage {
            Storage::F32 => sys::cudaDataType_t::CUDA_R_32F,
            Storage::F16 => sys::cudaDataType_t::CUDA_R_16F,
            Storage::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        };
        let compute = if s.storage == Storage::F32 && s.tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let (m, n, k) = (s.mnk.0 as u64, s.mnk.1 as u64, s.mnk.2 as u64);
        let (lda, ldb, ldc) = (s.ld.0 as i64, s.ld.1 as i64, s.ld.2 as i64);
        let op = |t: bool| {
            if t {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType_t::CUDA_R_32F)
            .map_err(cuda_err("cublasLtMatmulDescCreate"))?;
        // The plan owns what it made from here on (dropped on every error below).
        let mut plan = LtPlan { desc, layouts: [std::ptr::null_mut(); 3], algo: unsafe { std::mem::zeroed() } };
        let set = |attr: sys::cublasLtMatmulDescAttributes_t, v: *const c_void, size: usize| {
            // SAFETY: a live descriptor; `v` points at `size` bytes of the attribute's type.
            unsafe { lt::set_matmul_desc_attribute(desc, attr, v, size) }
                .map_err(cuda_err("cublasLtMatmulDescSetAttribute"))
        };
        use sys::cublasLtMatmulDescAttributes_t as A;
        // Column-major: D^T (N×M) = op(B)^T · op(A)^T, so cuBLASLt's A is kiln's B.
        let (ta, tb) = (op(s.trans_b), op(s.trans_a));
        set(A::CUBLASLT_MATMUL_DESC_TRANSA, (&ta as *const cudarc::cublas::sys::cublasOperation_t).cast(), 4)?;
        set(A::CUBLASLT_MATMUL_DESC_TRANSB, (&tb as *const cudarc::cublas::sys::cublasOperation_t).cast(), 4)?;
        let epilogue = match (s.bias, s.relu) {
            (false, false) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            (true, false) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            (false, true) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU,
            (true, true) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
        };
        set(A::CUBLASLT_MATMUL_DESC_EPILOGUE, (&epilogue as *const sys::cublasLtEpilogue_t).cast(), 4)?;
        // Stored (pre-transpose) column-major shapes: kiln's row-major B is N×K (or K×N
        // transposed) column-major, its A is K×M (or M×K).
        let (a_rows, a_cols) = if s.trans_b { (k, n) } else { (n, k) };
        let (b_rows, b_cols) = if s.trans_a { (m, k) } else { (k, m) };
        let layout = |rows: u64, cols: u64, ld: i64| {
            lt::create_matrix_layout(dt, rows, cols, ld).map_err(cuda_err("cublasLtMatrixLayoutCreate"))
        };
        plan.layouts[0] = layout(a_rows, a_cols, ldb)?;
        plan.layouts[1] = layout(b_rows, b_cols, lda)?;
        plan.layouts[2] = layout(n, m, ldc)?;
        let pref = lt::create_matmul_pref().map_err(cuda_err("cublasLtMatmulPreferenceCreate"))?;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let bytes = workspace_bytes as u64;
        let align = OPERAND_ALIGN as u32;
        let set_pref = |attr: P, v: *const c_void, size: usize| {
            // SAFETY: a live preference; `v` points at `size` bytes of the attribute's type.
            unsafe { lt::set_matmul_pref_attribute(pref, attr, v, size) }
        };
        // SAFETY: as above.
        let heuristic = unsafe {
            let r = set_pref(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, (&bytes as *const u64).cast(), 8)
                .and_then(|_| {
                    // Arena slots are 64-byte aligned, not 256 as cuBLASLt assumes by default.
                    for attr in [
                        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    ] {
                        set_pref(attr, (&align as *const u32).cast(), 4)?;
                    }
                    Ok(())
                })
                .and_then(|_| {
                    lt::get_matmul_algo_heuristic(
                        handle,
                        desc,
                        plan.layouts[0],
                        plan.layouts[1],
                        plan.layouts[2],
                        plan.layouts[2],
                        pref,
                    )
                });
            let _ = lt::destroy_matmul_pref(pref);
            r
        }
        .map_err(cuda_err("cublasLtMatmulAlgoGetHeuristic"))?;
        plan.algo = heuristic.algo;
        Ok(plan)
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `new`, destroyed once, after its plans.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}
