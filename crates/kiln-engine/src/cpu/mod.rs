//! The CPU backend: kiln-cpu's kernels behind the [`Backend`] trait.

mod attention;
mod conv;
mod conv_nhwc;
mod conv_packed;
mod depthwise_c16;
mod depthwise_nhwc;
mod epilogue;
mod global_pool;
mod inverted_bottleneck;
mod io;
mod matmul;
mod microkernel;
mod norm;
mod packed_gemm;
mod pool;
mod reference;
mod sgemm;
mod split;
#[cfg(test)]
mod tests;
mod transpose;
mod vecmath;
mod winograd;

use crate::backend::{Backend, LayerDesc, LayerKernel, Tactic};
use std::sync::Arc;

pub use reference::ReferenceKernel;

/// The tactics whose kernels read the weight [`CpuBackend::pack_weights`] packs for them.
const PACKING_TACTICS: [&str; 7] = [
    conv_packed::TACTIC,
    conv_packed::TRANSPOSED,
    conv_nhwc::TACTIC,
    matmul::PACKED,
    winograd::TACTIC,
    inverted_bottleneck::BANDED,
    inverted_bottleneck::LAYERED,
];

/// Runs layers on the host CPU.
#[derive(Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn device(&self) -> String {
        cpu_fingerprint()
    }

    /// Native tactics first (the default when tactics are not timed), the reference kernel
    /// last: it runs every op and is what the native ones are timed against.
    fn tactics(&self, layer: &LayerDesc) -> Vec<Tactic> {
        let mut out = conv::tactics(layer);
        out.extend(inverted_bottleneck::tactics(layer));
        if matmul::applies(layer) {
            out.push(Tactic::new(matmul::TACTIC));
        }
        if matmul::packed_applies(layer) {
            out.push(Tactic::new(matmul::PACKED));
        }
        if attention::applies(layer) {
            out.push(Tactic::new(attention::TACTIC));
        }
        if norm::applies(layer) {
            out.push(Tactic::new(norm::TACTIC));
        }
        if global_pool::applies(layer) {
            out.push(Tactic::new(global_pool::TACTIC));
        }
        if pool::applies(layer) {
            out.push(Tactic::new(pool::TACTIC));
        }
        if split::applies(layer) {
            out.push(Tactic::new(split::TACTIC));
        }
        if transpose::applies(layer) {
            out.push(Tactic::new(transpose::TACTIC));
        }
        if kiln_cpu::kernel(&layer.layer.op).is_some() {
            out.push(Tactic::new(reference::TACTIC));
        }
        out
    }

    /// The packed-multiply tactics keep their weight as register-tile panels in the plan.
    fn pack_weights(&self, layer: &LayerDesc, tactic: &str) -> Result<Vec<(usize, Vec<u8>)>, String> {
        if [inverted_bottleneck::BANDED, inverted_bottleneck::LAYERED].contains(&tactic) {
            let packed = inverted_bottleneck::pack_weights(layer)?;
            return Ok(packed.into_iter().map(|(i, w)| (i, bytemuck::cast_slice(&w).to_vec())).collect());
        }
        let Some(Some(w)) = layer.weights.get(1) else { return Ok(Vec::new()) };
        let values = || -> Result<&[f32], String> {
            bytemuck::try_cast_slice(w.bytes).map_err(|e| format!("weight bytes: {e:?}"))
        };
        let packed = match tactic {
            conv_packed::TACTIC | conv_packed::TRANSPOSED => {
                let group = layer.layer.attrs.int("group", 1)?.max(1) as usize;
                conv_packed::pack_weight(tactic, values()?, w.shape, group)?
            }
            conv_nhwc::TACTIC => conv_nhwc::pack_weight(values()?, w.shape)?,
            matmul::PACKED => matmul::pack_weight(values()?, w.shape, matmul::trans_b(layer)?)?,
            winograd::TACTIC if microkernel::available() => winograd::pack_weight(values()?, w.shape)?,
            _ => return Ok(Vec::new()),
        };
        Ok(vec![(1, bytemuck::cast_slice(&packed).to_vec())])
    }

    /// Convolutions (one group, or depthwise) and the pools around them, on f32, where the
    /// packed tile runs: their NHWC kernels need no im2col copy for 1×1 layers, no scatter
    /// back to planes, and no transposes around depthwise layers.
    fn channels_last(&self, net: &kiln_ir::Network, layer: &kiln_ir::Layer) -> bool {
        let f32_image = layer.inputs.first().copied().flatten().is_some_and(
            |x| matches!(&net.tensor(x).ty, Some(kiln_ir::ValueType::Tensor(t)) if t.dtype == kiln_ir::DType::F32),
        );
        if !microkernel::available() || !f32_image {
            return false;
        }
        match layer.op.as_str() {
            "Conv" => {
                let group = layer.attrs.int("group", 1).unwrap_or(0);
                let weight = layer.inputs.get(1).copied().flatten().and_then(|w| net.tensor(w).constant());
                // One group, or one filter per channel (weight [C, 1, kh, kw] with group C).
                let fits = weight.is_some_and(|w| {
                    w.dtype() == kiln_ir::DType::F32
                        && (group == 1 || w.shape().get(1) == Some(&1) && w.shape().first() == Some(&(group as usize)))
                });
                fits && !winograd_pays(net, layer)
            }
            "MaxPool" | "GlobalAveragePool" => true,
            _ => false,
        }
    }

    fn instantiate(&self, layer: &LayerDesc, tactic: &str) -> Result<Arc<dyn LayerKernel>, String> {
        if !PACKING_TACTICS.contains(&tactic) && layer.weights.iter().flatten().any(|w| w.packed) {
            return Err(format!("tactic {tactic} reads no packed weights, but the plan stores one packed"));
        }
        match tactic {
            reference::TACTIC => Ok(Arc::new(ReferenceKernel::new(layer.layer)?)),
            matmul::TACTIC | matmul::PACKED => Ok(Arc::new(matmul::MatMulKernel::new(layer, tactic)?)),
            attention::TACTIC => Ok(Arc::new(attention::AttentionKernel::new(layer)?)),
            norm::TACTIC => Ok(Arc::new(norm::LayerNormKernel::new(layer)?)),
            pool::TACTIC => Ok(Arc::new(pool::MaxPoolKernel::new(layer)?)),
            global_pool::TACTIC => Ok(Arc::new(global_pool::GlobalAveragePoolKernel::new(layer)?)),
            split::TACTIC => Ok(Arc::new(split::SplitKernel::new(layer)?)),
            conv::ONE_BY_ONE => Ok(Arc::new(conv::ConvKernel::new(layer, conv::ONE_BY_ONE)?)),
            conv::IM2COL => Ok(Arc::new(conv::ConvKernel::new(layer, conv::IM2COL)?)),
            conv::DEPTHWISE => Ok(Arc::new(conv::ConvKernel::new(layer, conv::DEPTHWISE)?)),
            depthwise_c16::TACTIC => Ok(Arc::new(conv::ConvKernel::new(layer, depthwise_c16::TACTIC)?)),
            depthwise_nhwc::TACTIC => Ok(Arc::new(conv::ConvKernel::new(layer, depthwise_nhwc::TACTIC)?)),
            conv_nhwc::TACTIC => Ok(Arc::new(conv_nhwc::NhwcConvKernel::new(layer)?)),
            transpose::TACTIC => Ok(Arc::new(transpose::TransposeKernel::new(layer)?)),
            conv_packed::TACTIC | conv_packed::TRANSPOSED => {
                Ok(Arc::new(conv_packed::PackedConvKernel::new(layer, tactic)?))
            }
            winograd::TACTIC => Ok(Arc::new(winograd::WinogradKernel::new(layer)?)),
            inverted_bottleneck::BANDED | inverted_bottleneck::LAYERED => {
                Ok(Arc::new(inverted_bottleneck::InvertedBottleneckKernel::new(layer, tactic)?))
            }
            other => Err(format!("the CPU backend has no tactic '{other}' for {}", layer.layer.op)),
        }
    }
}

/// The CPU a plan was built for: architecture, model name and the SIMD features kernels
/// dispatch on. A plan whose kernels were chosen for one CPU is refused on another.
pub fn cpu_fingerprint() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let mut features: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            features.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            features.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            features.push("fma");
        }
    }
    format!("{} {} [{}]", std::env::consts::ARCH, model, features.join(" "))
}

/// Whether a 3×3 stride-1 convolution of 128+ input channels should stay NCHW for the
/// Winograd tactic (NCHW only), which multiplies 2.25× fewer times than the NHWC product and
/// measured 0.72–0.86 ms against its 1.1 on ResNet-50's 28×28 and 14×14 layers; the two
/// transposes around it cost 0.02–0.05 ms. At 64 channels (56×56) the NHWC product wins.
fn winograd_pays(net: &kiln_ir::Network, layer: &kiln_ir::Layer) -> bool {
    let shape = |i: usize| -> Option<Vec<usize>> {
        let id = layer.inputs.get(i).copied().flatten()?;
        match &net.tensor(id).ty {
            Some(kiln_ir::ValueType::Tensor(t)) => kiln_ir::concrete(t.shape.as_deref()?),
            _ => None,
        }
    };
    let (Some(x), Some(w)) = (shape(0), shape(1)) else { return false };
    conv::Geometry::new(&layer.attrs, &x, &w).is_ok_and(|g| winograd::fits(&g) && g.cin >= 128)
}
