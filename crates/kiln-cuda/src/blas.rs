//! Matrix products through cuBLAS: row-major operands handed to the column-major library as
//! their transposes (C^T = B^T A^T), fp32 accumulation whatever the storage type.

use crate::error::{cuda_err, CudaResult};
use crate::kernels::Storage;
use cudarc::cublas::sys;
use std::ffi::c_void;

/// A cuBLAS handle bound to one stream.
pub(crate) struct Blas {
    handle: sys::cublasHandle_t,
}

// SAFETY: the handle is used by one session at a time (sessions are not shared between threads).
unsafe impl Send for Blas {}

impl Blas {
    pub fn new(stream: cudarc::driver::sys::CUstream, workspace: u64, workspace_bytes: usize) -> CudaResult<Blas> {
        // SAFETY: probes whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err("cuBLAS (libcublas.so) could not be loaded".into());
        }
        let handle = cudarc::cublas::result::create_handle().map_err(cuda_err("cublasCreate"))?;
        // SAFETY: a live handle; the stream and the workspace outlive it (the session owns all
        // three). A fixed workspace keeps cuBLAS from allocating inside a CUDA graph capture.
        unsafe {
            sys::cublasSetStream_v2(handle, stream as _).result().map_err(cuda_err("cublasSetStream"))?;
            sys::cublasSetWorkspace_v2(handle, workspace as *mut c_void, workspace_bytes)
                .result()
                .map_err(cuda_err("cublasSetWorkspace"))?;
        }
        Ok(Blas { handle })
    }

    /// Row-major `C[M, N] = alpha · op(A) · op(B)`, `batch` times with the given element
    /// strides between matrices (0 reuses one operand). `lda`/`ldb`/`ldc` are the row-major
    /// leading dimensions (elements between rows).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        storage: Storage,
        tf32: bool,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda, trans_a, stride_a): (u64, usize, bool, i64),
        (b, ldb, trans_b, stride_b): (u64, usize, bool, i64),
        (c, ldc, stride_c): (u64, usize, i64),
        batch: usize,
    ) -> CudaResult<()> {
        let dt = match storage {
            Storage::F32 => sys::cudaDataType_t::CUDA_R_32F,
            Storage::F16 => sys::cudaDataType_t::CUDA_R_16F,
            Storage::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        };
        let compute = if storage == Storage::F32 && tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let op = |t: bool| if t { sys::cublasOperation_t::CUBLAS_OP_T } else { sys::cublasOperation_t::CUBLAS_OP_N };
        let int =
            |v: usize, what: &str| i32::try_from(v).map_err(|_| format!("{what} {v} exceeds cuBLAS's 32-bit sizes"));
        let beta = 0.0f32;
        // Column-major: C^T (N×M) = op(B)^T (N×K) · op(A)^T (K×M).
        // SAFETY: the pointers address device buffers holding the operands (the caller sized
        // them from the shapes); alpha/beta live across the call.
        let status = unsafe {
            sys::cublasGemmStridedBatchedEx(
                self.handle,
                op(trans_b),
                op(trans_a),
                int(n, "N")?,
                int(m, "M")?,
                int(k, "K")?,
                (&alpha as *const f32).cast(),
                b as *const c_void,
                dt,
                int(ldb, "ldb")?,
                stride_b,
                a as *const c_void,
                dt,
                int(lda, "lda")?,
                stride_a,
                (&beta as *const f32).cast(),
                c as *mut c_void,
                dt,
                int(ldc, "ldc")?,
                stride_c,
                int(batch, "batch")?,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        status.result().map_err(cuda_err("cublasGemmStridedBatchedEx"))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { cudarc::cublas::result::destroy_handle(self.handle) };
    }
}
