//! Convolutions through cuDNN (its classic API): NCHW tensors in the engine's storage type,
//! fp32 accumulation, the algorithm measured by cuDNN on the first run at each input shape.

use crate::error::{cuda_err, CudaResult};
use crate::kernels::Storage;
use cudarc::cudnn::sys;
use std::ffi::c_void;

pub(crate) struct Dnn {
    handle: sys::cudnnHandle_t,
}

// SAFETY: used by one session at a time.
unsafe impl Send for Dnn {}

/// Descriptors and algorithm of one convolution at one input shape.
pub(crate) struct ConvPlan {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    pub workspace_bytes: usize,
    /// The input shape the plan is for.
    pub input_shape: Vec<usize>,
    /// A 1×1 convolution measured faster as a cuBLAS product than through cuDNN.
    pub use_gemm: bool,
}

// SAFETY: descriptors are host objects owned by the plan.
unsafe impl Send for ConvPlan {}

impl Drop for ConvPlan {
    fn drop(&mut self) {
        // SAFETY: created in `Dnn::plan`, destroyed once.
        unsafe {
            let _ = sys::cudnnDestroyTensorDescriptor(self.x);
            let _ = sys::cudnnDestroyTensorDescriptor(self.y);
            let _ = sys::cudnnDestroyFilterDescriptor(self.w);
            let _ = sys::cudnnDestroyConvolutionDescriptor(self.conv);
        }
    }
}

/// A 2-D convolution's geometry (1-D ones come with height 1).
#[derive(Clone)]
pub(crate) struct ConvShape {
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub y: [usize; 4],
    pub pads: [i32; 2],
    pub strides: [i32; 2],
    pub dilations: [i32; 2],
    pub group: i32,
}

impl ConvShape {
    /// A 1×1 convolution with unit strides, no padding and one group: per image, the product
    /// Y[K, H·W] = W[K, C] · X[C, H·W].
    pub fn is_pointwise(&self) -> bool {
        self.w[2] == 1
            && self.w[3] == 1
            && self.strides == [1, 1]
            && self.pads == [0, 0]
            && self.dilations == [1, 1]
            && self.group == 1
    }
}

/// cuDNN's forward algorithm number `n` (`CUDNN_CONVOLUTION_FWD_ALGO_*`).
pub(crate) fn algorithm(n: u32) -> Option<sys::cudnnConvolutionFwdAlgo_t> {
    use sys::cudnnConvolutionFwdAlgo_t as A;
    Some(match n {
        0 => A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        1 => A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        2 => A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        3 => A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        4 => A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        5 => A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        6 => A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        7 => A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        _ => return None,
    })
}

/// The number of cuDNN forward algorithms (`CUDNN_CONVOLUTION_FWD_ALGO_COUNT`).
pub(crate) const ALGORITHMS: u32 = 8;

fn dims(v: [usize; 4]) -> CudaResult<[i32; 4]> {
    let mut out = [0i32; 4];
    for (o, d) in out.iter_mut().zip(v) {
        *o = i32::try_from(d).map_err(|_| format!("dimension {d} exceeds cuDNN's 32-bit sizes"))?;
    }
    Ok(out)
}

impl Dnn {
    pub fn new(stream: cudarc::driver::sys::CUstream) -> CudaResult<Dnn> {
        // SAFETY: probes whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err("cuDNN (libcudnn.so.9) could not be loaded: kiln runs convolutions with it".into());
        }
        let mut handle = std::ptr::null_mut();
        // SAFETY: out-pointer to a handle; the stream outlives the handle (the session owns both).
        unsafe {
            sys::cudnnCreate(&mut handle).result().map_err(cuda_err("cudnnCreate"))?;
            sys::cudnnSetStream(handle, stream as _).result().map_err(cuda_err("cudnnSetStream"))?;
        }
        Ok(Dnn { handle })
    }

    /// Descriptors for `shape`, and the fastest algorithm whose workspace fits `max_workspace`
    /// (cuDNN runs each candidate once on scratch memory it allocates: never inside a capture).
    pub fn plan(&self, storage: Storage, tf32: bool, shape: &ConvShape, max_workspace: usize) -> CudaResult<ConvPlan> {
        let mut plan = self.describe(storage, tf32, shape)?;
        // SAFETY: descriptors of a live plan; out-pointers are valid locals.
        unsafe {
            let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; 8] = std::mem::zeroed();
            let mut found = 0i32;
            sys::cudnnFindConvolutionForwardAlgorithm(
                self.handle,
                plan.x,
                plan.w,
                plan.conv,
                plan.y,
                perf.len() as i32,
                &mut found,
                perf.as_mut_ptr(),
            )
            .result()
            .map_err(cuda_err("cudnnFindConvolutionForwardAlgorithm"))?;
            let best = perf[..found.max(0) as usize]
                .iter()
                .filter(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && p.memory <= max_workspace)
                .min_by(|a, b| a.time.total_cmp(&b.time))
                .ok_or("cuDNN has no algorithm for this convolution within the workspace limit")?;
            plan.algo = best.algo;
            plan.workspace_bytes = best.memory;
            tracing::debug!(algo = ?best.algo, ms = best.time, workspace = best.memory, "cuDNN convolution algorithm");
        }
        Ok(plan)
    }

    /// Descriptors for `shape` with algorithm number `algo` (a builder tactic), and the
    /// workspace it needs; an error where cuDNN does not support it for this convolution.
    pub fn plan_with(&self, storage: Storage, tf32: bool, shape: &ConvShape, algo: u32) -> CudaResult<ConvPlan> {
        let mut plan = self.describe(storage, tf32, shape)?;
        plan.algo = algorithm(algo).ok_or_else(|| format!("cuDNN has no forward algorithm {algo}"))?;
        let mut bytes = 0usize;
        // SAFETY: descriptors of a live plan; out-pointer to a local.
        unsafe {
            sys::cudnnGetConvolutionForwardWorkspaceSize(
                self.handle,
                plan.x,
                plan.w,
                plan.conv,
                plan.y,
                plan.algo,
                &mut bytes,
            )
            .result()
            .map_err(cuda_err("cudnnGetConvolutionForwardWorkspaceSize"))?;
        }
        plan.workspace_bytes = bytes;
        Ok(plan)
    }

    fn describe(&self, storage: Storage, tf32: bool, shape: &ConvShape) -> CudaResult<ConvPlan> {
        let dt = match storage {
            Storage::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            Storage::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
            Storage::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        };
        let math = match (storage, tf32) {
            (Storage::F32, false) => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            (Storage::F32, true) => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        };
        let (x, w, y) = (dims(shape.x)?, dims(shape.w)?, dims(shape.y)?);
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        // SAFETY: each descriptor is created before use and handed to the plan, which destroys
        // it; out-pointers are valid locals.
        unsafe {
            let mut plan = ConvPlan {
                x: std::ptr::null_mut(),
                w: std::ptr::null_mut(),
                y: std::ptr::null_mut(),
                conv: std::ptr::null_mut(),
                algo: sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                workspace_bytes: 0,
                input_shape: shape.x.to_vec(),
                use_gemm: false,
            };
            sys::cudnnCreateTensorDescriptor(&mut plan.x).result().map_err(cuda_err("cudnnCreateTensorDescriptor"))?;
            sys::cudnnCreateTensorDescriptor(&mut plan.y).result().map_err(cuda_err("cudnnCreateTensorDescriptor"))?;
            sys::cudnnCreateFilterDescriptor(&mut plan.w).result().map_err(cuda_err("cudnnCreateFilterDescriptor"))?;
            sys::cudnnCreateConvolutionDescriptor(&mut plan.conv)
                .result()
                .map_err(cuda_err("cudnnCreateConvolutionDescriptor"))?;
            sys::cudnnSetTensor4dDescriptor(plan.x, nchw, dt, x[0], x[1], x[2], x[3])
                .result()
                .map_err(cuda_err("input descriptor"))?;
            sys::cudnnSetTensor4dDescriptor(plan.y, nchw, dt, y[0], y[1], y[2], y[3])
                .result()
                .map_err(cuda_err("output descriptor"))?;
            sys::cudnnSetFilter4dDescriptor(plan.w, dt, nchw, w[0], w[1], w[2], w[3])
                .result()
                .map_err(cuda_err("filter descriptor"))?;
            sys::cudnnSetConvolution2dDescriptor(
                plan.conv,
                shape.pads[0],
                shape.pads[1],
                shape.strides[0],
                shape.strides[1],
                shape.dilations[0],
                shape.dilations[1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .result()
            .map_err(cuda_err("convolution descriptor"))?;
            sys::cudnnSetConvolutionGroupCount(plan.conv, shape.group).result().map_err(cuda_err("group count"))?;
            sys::cudnnSetConvolutionMathType(plan.conv, math).result().map_err(cuda_err("math type"))?;
            Ok(plan)
        }
    }

    /// y = conv(x, w) with `plan` (beta 0: y is overwritten).
    pub fn forward(&self, plan: &ConvPlan, x: u64, w: u64, y: u64, workspace: u64) -> CudaResult<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the buffers hold tensors of the plan's shapes (the caller sized them) and the
        // workspace has at least the plan's bytes.
        unsafe {
            sys::cudnnConvolutionForward(
                self.handle,
                (&alpha as *const f32).cast(),
                plan.x,
                x as *const c_void,
                plan.w,
                w as *const c_void,
                plan.conv,
                plan.algo,
                workspace as *mut c_void,
                plan.workspace_bytes,
                (&beta as *const f32).cast(),
                plan.y,
                y as *mut c_void,
            )
            .result()
            .map_err(cuda_err("cudnnConvolutionForward"))
        }
    }
}

impl Drop for Dnn {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { sys::cudnnDestroy(self.handle) };
    }
}
