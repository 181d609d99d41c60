//! Test support shared by the op families' unit tests.

use crate::execute;
use kiln_ir::{Attributes, Dim, Network, Tensor, TensorType, Value, ValueType};

/// Run one `op` layer on the CPU executor (`None` inputs are omitted optional inputs) and
/// return its `n_out` outputs. Inference and kernel are exercised together: every dtype and
/// known dim the rule inferred must match what the kernel produced (a mismatch panics — it is a
/// bug, not a test outcome). Inference or kernel errors come back as `Err`.
pub(crate) fn run_layer(
    op: &str,
    attrs: Attributes,
    inputs: &[Option<Tensor>],
    n_out: usize,
) -> Result<Vec<Tensor>, String> {
    let mut net = Network::new("test");
    let mut ids = Vec::new();
    let mut values = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        match t {
            Some(t) => {
                let id = net
                    .add_input(&format!("in{i}"), ValueType::Tensor(TensorType::of(t)))
                    .map_err(|e| e.to_string())?;
                ids.push(Some(id));
                values.push(Value::Tensor(t.clone()));
            }
            None => ids.push(None),
        }
    }
    let names: Vec<String> = (0..n_out).map(|i| format!("out{i}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let outs = net.add_layer("layer", op, attrs, &ids, &refs).map_err(|e| e.to_string())?;
    for id in outs.iter().flatten() {
        net.mark_output(*id).map_err(|e| e.to_string())?;
    }
    let results = execute(&net, values).map_err(|e| e.to_string())?;
    let mut tensors = Vec::with_capacity(results.len());
    for (v, id) in results.into_iter().zip(outs.iter().flatten()) {
        let t = v.into_tensor().ok_or("output is not a tensor")?;
        if let Some(ValueType::Tensor(tt)) = &net.tensor(*id).ty {
            assert_eq!(tt.dtype, t.dtype(), "{op}: inferred dtype");
            if let Some(s) = &tt.shape {
                assert_eq!(s.len(), t.rank(), "{op}: inferred rank of {s:?} vs {:?}", t.shape());
                for (d, &n) in s.iter().zip(t.shape()) {
                    if let Dim::Known(k) = d {
                        assert_eq!(*k, n, "{op}: inferred shape {s:?} vs {:?}", t.shape());
                    }
                }
            }
        }
        tensors.push(t);
    }
    Ok(tensors)
}
