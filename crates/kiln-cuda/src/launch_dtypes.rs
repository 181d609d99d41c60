//! Launching the dtype ops that are not generated kernels (inference-mode Dropout), and the
//! choice of a library kernel's float instantiation per tensor (native f16/bf16 graphs).

use crate::error::CudaResult;
use crate::kernels::{dtype_code, Storage};
use crate::launch::numel;
use crate::program::Func;
use crate::session::CudaSession;
use kiln_ir::DType;
use std::ffi::c_void;

/// `error_flag` value of a Dropout the CPU kernel refuses (training mode with a nonzero ratio,
/// or a ratio outside [0, 1)).
pub(crate) const DROPOUT_REFUSED: i32 = 2;

impl CudaSession {
    /// Dropout at inference: Y = X, the optional mask all true. Its run-time ratio and
    /// training_mode inputs are checked on the device (a kernel sets the error flag where the
    /// CPU kernel would fail), so the run never waits on them.
    pub(crate) fn dropout(&mut self, li: usize) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let bytes = numel(&self.shape(x)?) * self.device_dtype(x)?.size();
        let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
        if bytes > 0 && xp != yp {
            // SAFETY: both slots hold `bytes` (shapes checked against the slots).
            unsafe { cudarc::driver::result::memcpy_dtod_async(yp, xp, bytes, self.stream) }
                .map_err(|e| format!("device copy: {e:?}"))?;
        }
        if let Some(mask) = self.p.graph.layers[li].layer.outputs.get(1).copied().flatten() {
            let n = numel(&self.shape(mask.0)?);
            if n > 0 {
                // SAFETY: the mask's slot holds n one-byte bools.
                unsafe { cudarc::driver::result::memset_d8_async(self.ptr(mask.0)?, 1, n, self.stream) }
                    .map_err(|e| format!("device fill: {e:?}"))?;
            }
        }
        let (ratio, training) = (self.input(li, 1), self.input(li, 2));
        if ratio.is_none() && training.is_none() {
            return Ok(());
        }
        let (rp, rt) = match ratio {
            Some(r) => (self.ptr(r)?, dtype_code(self.device_dtype(r)?).ok_or("Dropout ratio of an unknown type")?),
            None => (0u64, 0i32),
        };
        let tp = match training {
            Some(t) if self.device_dtype(t)? == DType::Bool => self.ptr(t)?,
            Some(_) => return Err("Dropout training_mode must be a bool".into()),
            None => 0u64,
        };
        let f = self.p.func("dropout_check")?;
        let err = self.error_flag.ptr();
        // Kernel parameters: pointers to live locals of the kernel's parameter types.
        let mut params: [*mut c_void; 4] = [
            (&tp) as *const u64 as *mut c_void,
            (&rp) as *const u64 as *mut c_void,
            (&rt) as *const i32 as *mut c_void,
            (&err) as *const u64 as *mut c_void,
        ];
        self.launch(f, 1, 32, &mut params)
    }
}

impl CudaSession {
    /// The float type float tensor `id` has on the device, as the storage struct its kernels
    /// are instantiated for: fp32 graph tensors take the engine's storage type, native f16 and
    /// bf16 tensors keep theirs.
    pub(crate) fn float_storage(&self, id: usize) -> CudaResult<Storage> {
        match self.device_dtype(id)? {
            DType::F32 => Ok(Storage::F32),
            DType::F16 => Ok(Storage::F16),
            DType::BF16 => Ok(Storage::BF16),
            other => Err(format!("no float kernels for {other} tensors")),
        }
    }

    /// Library kernel `name` (one of KILN_INSTANTIATE) for float tensor `id`'s device type.
    pub(crate) fn typed_for(&self, name: &str, id: usize) -> CudaResult<Func> {
        self.p.func(&format!("{name}_{}", self.float_storage(id)?.suffix()))
    }
}
