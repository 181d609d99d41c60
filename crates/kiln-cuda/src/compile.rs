//! NVRTC: the engine's CUDA C (the kernel library plus one generated kernel per fused
//! element-wise layer) compiled to a cubin for the device's architecture at build time. The
//! cubin goes into the plan, so loading an engine compiles nothing.

use crate::error::{cuda_err, CudaResult};
use crate::kernels::{elementwise, LIBRARY};
use crate::lower::{GpuOp, Placement};
use cudarc::nvrtc::sys;
use std::ffi::CString;

/// The whole CUDA C source of an engine.
pub(crate) fn engine_source(placements: &[Placement]) -> String {
    let mut src = String::from(LIBRARY);
    for (li, p) in placements.iter().enumerate() {
        if let Placement::Gpu(GpuOp::Elementwise { program }) = p {
            src.push('\n');
            src.push_str(&elementwise::generate(li, program));
        }
    }
    src
}

/// Compile `source` for compute capability `cc` to a cubin (the device's own machine code).
pub(crate) fn compile_cubin(source: &str, cc: (i32, i32)) -> CudaResult<Vec<u8>> {
    // SAFETY: probes whether the shared library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Err("NVRTC (libnvrtc.so) could not be loaded: kiln compiles its CUDA kernels with it".into());
    }
    let src = CString::new(source).map_err(|_| "kernel source contains a NUL byte".to_string())?;
    let name = CString::new("kiln_engine.cu").expect("no NUL");
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&name)).map_err(cuda_err("nvrtcCreateProgram"))?;
    let options = [
        format!("--gpu-architecture=sm_{}{}", cc.0, cc.1),
        "--std=c++17".to_string(),
        "--device-as-default-execution-space".to_string(),
    ];
    // SAFETY: `prog` is a live program; the options outlive the call.
    let compiled = unsafe { cudarc::nvrtc::result::compile_program(prog, &options) };
    if let Err(e) = compiled {
        // SAFETY: as above.
        let log = unsafe { cudarc::nvrtc::result::get_program_log(prog) }
            .map(|l| l.iter().map(|&c| c as u8 as char).collect::<String>())
            .unwrap_or_default();
        // SAFETY: as above.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
        return Err(format!("NVRTC failed to compile kiln's kernels ({e:?}):\n{log}"));
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; the buffer has the size NVRTC reports.
    let cubin = unsafe {
        sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(cuda_err("nvrtcGetCUBINSize"))?;
        let mut buf = vec![0u8; size];
        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()).result().map_err(cuda_err("nvrtcGetCUBIN"))?;
        let _ = cudarc::nvrtc::result::destroy_program(prog);
        buf
    };
    tracing::info!(bytes = cubin.len(), arch = %format!("sm_{}{}", cc.0, cc.1), "CUDA kernels compiled");
    Ok(cubin)
}
