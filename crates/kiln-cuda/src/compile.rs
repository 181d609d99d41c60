//! NVRTC: the engine's CUDA C compiled to cubins for the device's architecture at build time —
//! the kernel library (the same for every engine) and one module of the kernels generated for its
//! fused element-wise layers. Both go into the plan, so loading an engine compiles nothing.
//! Compiled modules are cached per process by source, so building many engines (a test suite)
//! compiles the library once.

use crate::error::{cuda_err, CudaResult};
use crate::kernels::{elementwise, prelude, typed, Storage, LIBRARY};
use crate::lower::{GpuOp, Placement};
use cudarc::nvrtc::sys;
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

/// The source of the engine's generated kernels (`None` when it has none).
pub(crate) fn generated_source(placements: &[Placement], storage: Storage) -> Option<String> {
    let mut src = String::from(prelude());
    let mut any = false;
    for (li, p) in placements.iter().enumerate() {
        let code = match p {
            Placement::Gpu(GpuOp::Elementwise { program }) => elementwise::generate(li, program),
            Placement::Gpu(GpuOp::Typed(op)) => typed::generate(li, op, storage.struct_name()),
            _ => continue,
        };
        src.push('\n');
        src.push_str(&code);
        any = true;
    }
    any.then_some(src)
}

/// The engine's device code: the library's cubin and the generated one, as the plan stores
/// them (`[library length: u64 LE][library][generated]`).
pub(crate) fn engine_code(placements: &[Placement], storage: Storage, cc: (i32, i32)) -> CudaResult<Vec<u8>> {
    let library = compile_cached(LIBRARY, cc)?;
    let generated = match generated_source(placements, storage) {
        Some(src) => compile_cached(&src, cc)?,
        None => Arc::new(Vec::new()),
    };
    let mut code = Vec::with_capacity(8 + library.len() + generated.len());
    code.extend_from_slice(&(library.len() as u64).to_le_bytes());
    code.extend_from_slice(&library);
    code.extend_from_slice(&generated);
    Ok(code)
}

/// The two cubins of `engine_code`'s output; an error for a malformed blob (a plan is input).
pub(crate) fn split_code(code: &[u8]) -> CudaResult<(&[u8], &[u8])> {
    let bad = || "the plan's CUDA code section is malformed".to_string();
    let len = u64::from_le_bytes(code.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let library = code.get(8..8usize.checked_add(len).ok_or_else(bad)?).ok_or_else(bad)?;
    Ok((library, &code[8 + len..]))
}

/// Compiled modules by (source hash, architecture).
type ModuleCache = HashMap<(u64, (i32, i32)), Arc<Vec<u8>>>;

fn compile_cached(source: &str, cc: (i32, i32)) -> CudaResult<Arc<Vec<u8>>> {
    static CACHE: Mutex<Option<ModuleCache>> = Mutex::new(None);
    let key = (xxhash_rust::xxh3::xxh3_64(source.as_bytes()), cc);
    if let Some(hit) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(&key) {
        return Ok(hit.clone());
    }
    let cubin = Arc::new(compile_cubin(source, cc)?);
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(key, cubin.clone());
    Ok(cubin)
}

/// Compile `source` for compute capability `cc` to a cubin (the device's own machine code).
fn compile_cubin(source: &str, cc: (i32, i32)) -> CudaResult<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::elementwise_program::Program;
    use kiln_ir::DType;

    /// The kernel library and generated kernels of every kind compile for sm_90 wherever NVRTC
    /// can be loaded (no GPU needed); elsewhere the test says it skipped.
    #[test]
    fn library_and_generated_kernels_compile_with_nvrtc() {
        // SAFETY: probes whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            eprintln!("skipping: NVRTC (libnvrtc.so) is not available here");
            return;
        }
        let program = Program::parse(&["in 0".into(), "in 1".into(), "Add".into(), "Gelu".into()]).unwrap();
        let typed_ops = typed::every_op_for_tests();
        for storage in [Storage::F32, Storage::F16, Storage::BF16] {
            // Every typed op over every dtype combination it accepts; with 16-bit storage, those
            // touching fp32 graph tensors (the only ones the storage type changes).
            let touches_f32 = |op: &typed::TypedOp| op.out == DType::F32 || op.inputs.contains(&Some(DType::F32));
            let mut placements = vec![Placement::Gpu(GpuOp::Elementwise { program: program.clone() })];
            placements.extend(
                typed_ops
                    .iter()
                    .filter(|op| storage == Storage::F32 || touches_f32(op))
                    .map(|op| Placement::Gpu(GpuOp::Typed(op.clone()))),
            );
            let code = engine_code(&placements, storage, (9, 0)).unwrap_or_else(|e| panic!("{e}"));
            let (library, generated) = split_code(&code).unwrap();
            assert!(!library.is_empty() && !generated.is_empty());
        }
    }

    /// Every kernel name the program looks up is a symbol of the compiled library (the cubin is
    /// an ELF file: its symbol names are NUL-terminated strings in it).
    #[test]
    fn every_library_kernel_name_is_in_the_cubin() {
        // SAFETY: probes whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            eprintln!("skipping: NVRTC (libnvrtc.so) is not available here");
            return;
        }
        let cubin = compile_cached(crate::kernels::LIBRARY, (9, 0)).unwrap_or_else(|e| panic!("{e}"));
        let names = crate::kernels::library_kernel_names();
        assert!(names.len() > 20, "too few kernels found in the source: {names:?}");
        // One of each way a kernel is declared: plain, per storage type, per element size.
        for expected in ["cast_any", "epilogue_f16", "gather_elements_4"] {
            assert!(names.iter().any(|n| n == expected), "{expected} was not found in the source");
        }
        for name in names {
            let symbol = format!("{name}\0");
            assert!(cubin.windows(symbol.len()).any(|w| w == symbol.as_bytes()), "{name} is not in the cubin");
        }
    }
}
