//! Tactic timing at build time: the builder asks the backend for a convolution's candidates
//! (each cuDNN forward algorithm cuDNN supports for it, and a cuBLAS product for 1×1
//! convolutions) and times each on device buffers of the profile's opt shapes with CUDA events.
//! The chosen tactic goes into the plan (and the timing cache), so a loaded engine searches
//! nothing.

use crate::blas::Blas;
use crate::device::Device;
use crate::dnn::{ConvShape, Dnn, ALGORITHMS};
use crate::error::{cuda_err, CudaResult};
use crate::kernels::Storage;
use crate::memory::DeviceBuffer;
use crate::program::convert_into;
use crate::session::Stream;
use cudarc::driver::{result, sys};
use kiln_engine::Tactic;
use std::sync::Arc;

/// Tactic name of cuDNN forward algorithm `n`.
pub(crate) fn algo_tactic(n: u32) -> String {
    format!("cudnn-algo-{n}")
}

/// The cuDNN algorithm a tactic names, if it names one.
pub(crate) fn tactic_algo(tactic: &str) -> Option<u32> {
    tactic.strip_prefix("cudnn-algo-")?.parse().ok()
}

/// A 1×1 convolution as one cuBLAS product per image.
pub(crate) const POINTWISE_GEMM_TACTIC: &str = "cublas-1x1";

/// Device time of one `run` on `stream`, in ms: the best of three means over 20 runs each,
/// after warm-up runs. Convolution tactics differ by microseconds; fewer repetitions picked
/// different tactics from build to build (ResNet-50 fp16 batch 1 engines between 0.8 and 1.5 ms).
pub(crate) fn time_ms(stream: sys::CUstream, mut run: impl FnMut() -> CudaResult<()>) -> CudaResult<f64> {
    const WARMUP: usize = 3;
    const REPEATS: usize = 20;
    const SAMPLES: usize = 3;
    for _ in 0..WARMUP {
        run()?;
    }
    let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
    let start = result::event::create(flags).map_err(cuda_err("creating an event"))?;
    let end = result::event::create(flags).map_err(cuda_err("creating an event"))?;
    // SAFETY: events of this context recorded on `stream`, destroyed below.
    let best = unsafe {
        let mut timed = || -> CudaResult<f32> {
            let mut best = f32::INFINITY;
            for _ in 0..SAMPLES {
                result::event::record(start, stream).map_err(cuda_err("recording an event"))?;
                for _ in 0..REPEATS {
                    run()?;
                }
                result::event::record(end, stream).map_err(cuda_err("recording an event"))?;
                result::event::synchronize(end).map_err(cuda_err("waiting for an event"))?;
                best = best.min(result::event::elapsed(start, end).map_err(cuda_err("reading an event"))?);
            }
            Ok(best)
        };
        let ms = timed();
        let _ = result::event::destroy(start);
        let _ = result::event::destroy(end);
        ms?
    };
    Ok(best as f64 / REPEATS as f64)
}

/// Handles and scratch memory for timing tactics (one per backend, used under its lock).
pub(crate) struct Tuner {
    device: Arc<Device>,
    dnn: Dnn,
    blas: Blas,
    _blas_workspace: DeviceBuffer,
    stream: Stream,
}

// SAFETY: used behind the backend's mutex, one thread at a time.
unsafe impl Send for Tuner {}

impl Tuner {
    pub fn new(device: Arc<Device>) -> CudaResult<Tuner> {
        device.bind()?;
        let stream = Stream(
            result::stream::create(result::stream::StreamKind::NonBlocking).map_err(cuda_err("creating a stream"))?,
        );
        let ws = DeviceBuffer::new(&device, 32 << 20)?;
        let blas = Blas::new(stream.0, ws.ptr(), ws.len())?;
        let dnn = Dnn::new(stream.0)?;
        Ok(Tuner { device, dnn, blas, _blas_workspace: ws, stream })
    }

    /// The convolution's candidates with their workspace needs: every cuDNN algorithm cuDNN
    /// accepts for it, and the product form of a 1×1 convolution.
    pub fn conv_tactics(&self, storage: Storage, tf32: bool, shape: &ConvShape) -> Vec<Tactic> {
        let _ = self.device.bind();
        let mut out = Vec::new();
        if shape.is_pointwise() {
            out.push(Tactic::new(POINTWISE_GEMM_TACTIC));
        }
        for n in 0..ALGORITHMS {
            if let Ok(plan) = self.dnn.plan_with(storage, tf32, shape, n) {
                out.push(Tactic { name: algo_tactic(n), workspace_bytes: plan.workspace_bytes });
            }
        }
        out
    }

    /// Time one tactic on random data of the convolution's shapes, in microseconds.
    pub fn time_conv(&self, storage: Storage, tf32: bool, shape: &ConvShape, tactic: &str) -> CudaResult<f64> {
        self.device.bind()?;
        let esize = storage.dtype().size();
        let random = |n: usize, seed: u64| -> CudaResult<DeviceBuffer> {
            let mut s = seed | 1;
            let host: Vec<u8> = (0..n)
                .flat_map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ((s % 2000) as f32 / 1000.0 - 1.0).to_le_bytes()
                })
                .collect();
            let mut dev = vec![0u8; n * esize];
            convert_into(&host, kiln_ir::DType::F32, storage, &mut dev);
            let buf = DeviceBuffer::new(&self.device, dev.len())?;
            // SAFETY: the buffer holds dev.len() bytes.
            unsafe { result::memcpy_htod_sync(buf.ptr(), &dev) }.map_err(cuda_err("uploading timing data"))?;
            Ok(buf)
        };
        let (x, w) = (random(shape.x.iter().product(), 1)?, random(shape.w.iter().product(), 2)?);
        let y = DeviceBuffer::new(&self.device, shape.y.iter().product::<usize>() * esize)?;
        let ms = if tactic == POINTWISE_GEMM_TACTIC {
            time_ms(self.stream.0, || {
                crate::launch::pointwise_gemm(&self.blas, storage, tf32, shape, (x.ptr(), w.ptr(), y.ptr()))
            })?
        } else {
            let algo = tactic_algo(tactic).ok_or_else(|| format!("unknown convolution tactic {tactic}"))?;
            let plan = self.dnn.plan_with(storage, tf32, shape, algo)?;
            let ws = DeviceBuffer::new(&self.device, plan.workspace_bytes)?;
            time_ms(self.stream.0, || self.dnn.forward(&plan, x.ptr(), w.ptr(), y.ptr(), ws.ptr()))?
        };
        Ok(ms * 1e3)
    }
}
