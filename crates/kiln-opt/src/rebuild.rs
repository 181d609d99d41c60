//! Building the next network from the current one: copy what stays, substitute what changed.

use kiln_ir::{Attributes, IrError, Layer, Network, Tensor, TensorId, TensorSource, ValueType};

/// Copies a source network into a new one, layer by layer, with substitutions. Layers must be
/// visited in the source's order, so everything a layer reads already exists in the copy.
pub struct Rebuilder<'a> {
    src: &'a Network,
    dst: Network,
    /// Source tensor → its counterpart in the copy.
    map: Vec<Option<TensorId>>,
}

impl<'a> Rebuilder<'a> {
    /// Start a copy with the same inputs (names and types).
    pub fn new(src: &'a Network) -> Result<Self, IrError> {
        Self::with_input_types(src, |_, ty| ty.cloned())
    }

    /// Start a copy whose inputs keep their names but take the types `retype(name, old type)`
    /// returns (shape specialization: symbolic dims replaced by numbers). Every layer copied
    /// afterwards has its types inferred again from the new inputs.
    pub fn with_input_types(
        src: &'a Network,
        retype: impl Fn(&str, Option<&ValueType>) -> Option<ValueType>,
    ) -> Result<Self, IrError> {
        let mut dst = Network::new(src.name.clone());
        let mut map = vec![None; src.tensors().len()];
        for &id in src.inputs() {
            let info = src.tensor(id);
            let new = match retype(&info.name, info.ty.as_ref()) {
                Some(ty) => dst.add_input(&info.name, ty)?,
                None => dst.add_untyped_input(&info.name)?,
            };
            map[id.0] = Some(new);
        }
        Ok(Rebuilder { src, dst, map })
    }

    pub fn src(&self) -> &'a Network {
        self.src
    }

    /// The copy so far.
    pub fn dst(&self) -> &Network {
        &self.dst
    }

    /// The copy's tensor for a source tensor; constants and captured values are copied on
    /// first use, so ones nothing reads any more are dropped.
    pub fn map(&mut self, id: TensorId) -> Result<TensorId, IrError> {
        if let Some(d) = self.map[id.0] {
            return Ok(d);
        }
        let info = self.src.tensor(id);
        let new = match &info.source {
            TensorSource::Constant(t) => self.dst.add_constant(&info.name, t.clone())?,
            TensorSource::Captured => self.dst.add_captured(&info.name, info.ty.clone())?,
            _ => {
                return Err(IrError::Invalid(format!(
                    "tensor '{}' is read before the layer producing it was copied",
                    info.name
                )))
            }
        };
        self.map[id.0] = Some(new);
        Ok(new)
    }

    /// From now on, readers of source tensor `src` read `dst` (a tensor of the copy) instead.
    pub fn alias(&mut self, src: TensorId, dst: TensorId) {
        self.map[src.0] = Some(dst);
    }

    /// Copy a layer unchanged (inputs mapped; outputs keep their names).
    pub fn copy_layer(&mut self, layer: &Layer) -> Result<(), IrError> {
        let inputs = self.map_inputs(&layer.inputs)?;
        let implicit = layer.implicit_inputs.iter().map(|&id| self.map_by_name(id)).collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> =
            layer.outputs.iter().map(|o| o.map(|id| self.src.tensor(id).name.clone()).unwrap_or_default()).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let outs =
            self.dst.add_layer_with_implicit(&layer.name, &layer.op, layer.attrs.clone(), &inputs, &refs, implicit)?;
        for (src, dst) in layer.outputs.iter().zip(outs) {
            if let (Some(s), Some(d)) = (src, dst) {
                self.map[s.0] = Some(d);
            }
        }
        Ok(())
    }

    /// Add a new layer reading tensors of the copy; its outputs stand for the given source
    /// tensors (which name them).
    pub fn add_layer(
        &mut self,
        name: &str,
        op: &str,
        attrs: Attributes,
        inputs: &[Option<TensorId>],
        replaces: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>, IrError> {
        let names: Vec<String> =
            replaces.iter().map(|o| o.map(|id| self.src.tensor(id).name.clone()).unwrap_or_default()).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let outs = self.dst.add_layer(name, op, attrs, inputs, &refs)?;
        for (src, dst) in replaces.iter().zip(&outs) {
            if let (Some(s), Some(d)) = (src, dst) {
                self.map[s.0] = Some(*d);
            }
        }
        Ok(outs)
    }

    /// Add a new layer reading tensors of the copy whose outputs are new tensors named
    /// `outputs` (intermediate results of a rewrite that stand for no source tensor).
    pub fn add_new_layer(
        &mut self,
        name: &str,
        op: &str,
        attrs: Attributes,
        inputs: &[Option<TensorId>],
        outputs: &[&str],
    ) -> Result<Vec<Option<TensorId>>, IrError> {
        self.dst.add_layer(name, op, attrs, inputs, outputs)
    }

    /// Source tensor `src` becomes a constant (same name) in the copy.
    pub fn constant(&mut self, src: TensorId, value: Tensor) -> Result<TensorId, IrError> {
        let id = self.dst.add_constant(&self.src.tensor(src).name, value)?;
        self.map[src.0] = Some(id);
        Ok(id)
    }

    /// A new constant in the copy (new weights computed by a pass).
    pub fn constant_named(&mut self, name: &str, value: Tensor) -> Result<TensorId, IrError> {
        self.dst.add_constant(name, value)
    }

    /// Map a layer's positional inputs.
    pub fn map_inputs(&mut self, inputs: &[Option<TensorId>]) -> Result<Vec<Option<TensorId>>, IrError> {
        inputs.iter().map(|i| i.map(|id| self.map(id)).transpose()).collect()
    }

    /// Like [`Rebuilder::map`], for a tensor a subgraph reads by name: if it was replaced by a
    /// tensor of another name, an Identity brings the name back.
    fn map_by_name(&mut self, id: TensorId) -> Result<TensorId, IrError> {
        let mapped = self.map(id)?;
        let name = self.src.tensor(id).name.clone();
        if self.dst.tensor(mapped).name == name {
            return Ok(mapped);
        }
        let renamed = match self.dst.tensor_by_name(&name) {
            Some(existing) => existing,
            None => self.dst.add_layer(
                &format!("{name}::captured"),
                "Identity",
                Attributes::new(),
                &[Some(mapped)],
                &[name.as_str()],
            )?[0]
                .expect("named output"),
        };
        self.map[id.0] = Some(renamed);
        Ok(renamed)
    }

    /// Finish the copy: mark the outputs. An output whose producer was replaced by another
    /// tensor keeps its name through an Identity layer, so callers bind outputs as before.
    pub fn finish(mut self) -> Result<Network, IrError> {
        for &out in self.src.outputs() {
            let name = &self.src.tensor(out).name;
            let mut id = self.map(out)?;
            if &self.dst.tensor(id).name != name {
                let layer = format!("{name}::output");
                id = self.dst.add_layer(&layer, "Identity", Attributes::new(), &[Some(id)], &[name.as_str()])?[0]
                    .expect("named output");
            }
            if let Some(ty) = self.src.tensor(out).ty.clone() {
                self.dst.refine_type(id, ty);
            }
            self.dst.mark_output(id)?;
        }
        Ok(self.dst)
    }
}
