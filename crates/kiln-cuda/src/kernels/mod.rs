//! The CUDA C kernels: a fixed library (library.cu) plus code generated per fused element-wise
//! layer (elementwise.rs), compiled together by NVRTC into one module per engine.

pub(crate) mod elementwise;
pub(crate) mod typed;

use kiln_ir::{Activation, DType};

/// The hand-written kernels: library.cu (the shared prelude, then the core kernels) and one file
/// per op family, compiled as one source.
pub(crate) const LIBRARY: &str = concat!(
    include_str!("library.cu"),
    include_str!("values.cu"),
    include_str!("index.cu"),
    include_str!("spatial.cu"),
    include_str!("sequence.cu"),
    include_str!("dtypes.cu"),
);

/// Every kernel the library defines, as the module names it: `extern "C" __global__ void NAME(`
/// once, `KILN_INSTANTIATE(NAME, ..)` once per storage type (`NAME_f32`, `NAME_f16`,
/// `NAME_bf16`) and `KILN_BY_SIZE(NAME, ..)` once per element size (`NAME_1` .. `NAME_8`). Read from the source, so a new kernel cannot be left out of the lookup table.
pub(crate) fn library_kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for line in LIBRARY.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("extern \"C\" __global__ void ") {
            if let Some(name) = rest.split('(').next().filter(|n| !n.contains("##")) {
                names.push(name.trim().to_string());
            }
        } else if let Some(rest) = line.strip_prefix("KILN_INSTANTIATE(") {
            let name = rest.split(',').next().unwrap_or("").trim();
            for storage in [Storage::F32, Storage::F16, Storage::BF16] {
                names.push(format!("{name}_{}", storage.suffix()));
            }
        } else if let Some(rest) = line.strip_prefix("KILN_BY_SIZE(") {
            let name = rest.split(',').next().unwrap_or("").trim();
            for size in [1, 2, 4, 8] {
                names.push(format!("{name}_{size}"));
            }
        }
    }
    names
}

/// The part of the library generated kernels build on: load/store types, macros, activations
/// and broadcast indexing (no kernels).
pub(crate) fn prelude() -> &'static str {
    let end = LIBRARY.find("// ==== kernels").unwrap_or(LIBRARY.len());
    &LIBRARY[..end]
}

/// How float tensors are stored on the device: the engine's precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Storage {
    F32,
    F16,
    BF16,
}

impl Storage {
    pub fn for_precisions(p: kiln_engine::Precisions) -> Storage {
        if p.fp16 {
            Storage::F16
        } else if p.bf16 {
            Storage::BF16
        } else {
            Storage::F32
        }
    }

    /// Suffix of the kernel instantiated for this storage type.
    pub fn suffix(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
            Storage::BF16 => "bf16",
        }
    }

    /// The struct library.cu loads and stores this type with.
    pub fn struct_name(self) -> &'static str {
        match self {
            Storage::F32 => "F32",
            Storage::F16 => "F16",
            Storage::BF16 => "BF16",
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Storage::F32 => DType::F32,
            Storage::F16 => DType::F16,
            Storage::BF16 => DType::BF16,
        }
    }
}

/// The dtype a tensor of graph dtype `d` has on the device: fp32 tensors take the engine's
/// storage type, everything else stays as it is.
pub(crate) fn device_dtype(d: DType, storage: Storage) -> DType {
    if d == DType::F32 {
        storage.dtype()
    } else {
        d
    }
}

/// Type codes of `cast_any` in library.cu.
pub(crate) fn dtype_code(d: DType) -> Option<i32> {
    Some(match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::F64 => 3,
        DType::I64 => 4,
        DType::I32 => 5,
        DType::Bool => 6,
        DType::I8 => 7,
        DType::U8 => 8,
        DType::I16 => 9,
        DType::U16 => 10,
        DType::U32 => 11,
        DType::U64 => 12,
    })
}

/// Activation codes of `apply_act` in library.cu, with its two parameters.
pub(crate) fn activation_code(a: Option<Activation>) -> (i32, f32, f32) {
    match a {
        None => (0, 0.0, 0.0),
        Some(Activation::Relu) => (1, 0.0, 0.0),
        Some(Activation::Clip { min, max }) => (2, min, max),
        Some(Activation::Sigmoid) => (3, 0.0, 0.0),
        Some(Activation::Silu) => (4, 0.0, 0.0),
        Some(Activation::GeluErf) => (5, 0.0, 0.0),
        Some(Activation::GeluTanh) => (6, 0.0, 0.0),
        Some(Activation::HardSwish) => (7, 0.0, 0.0),
        Some(Activation::HardSigmoid { alpha, beta }) => (8, alpha, beta),
        Some(Activation::LeakyRelu { alpha }) => (9, alpha, 0.0),
        Some(Activation::Tanh) => (10, 0.0, 0.0),
    }
}

/// Most dimensions a strided copy or a broadcast handles (`Dims8` in library.cu).
pub(crate) const MAX_RANK: usize = 8;

/// `Dims8` of library.cu: a block's shape and its strides (in elements) at the source and the
/// destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Dims8 {
    pub shape: [i64; MAX_RANK],
    pub src_stride: [i64; MAX_RANK],
    pub dst_stride: [i64; MAX_RANK],
}

/// Row-major strides of `shape`, in elements.
pub(crate) fn strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1] as i64;
    }
    s
}
