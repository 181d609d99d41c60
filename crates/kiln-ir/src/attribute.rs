//! Layer attributes: a name → typed value map, with spec-default readers that fail with a
//! message naming the attribute.

use crate::{Network, Tensor, ValueType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Attribute {
    Float(f32),
    Int(i64),
    String(String),
    Tensor(Tensor),
    Graph(#[serde(deserialize_with = "crate::network::nested")] Arc<Network>),
    Type(ValueType),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
    Tensors(Vec<Tensor>),
    Graphs(#[serde(deserialize_with = "crate::network::nested")] Vec<Arc<Network>>),
}

impl Attribute {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Attribute::Float(_) => "float",
            Attribute::Int(_) => "int",
            Attribute::String(_) => "string",
            Attribute::Tensor(_) => "tensor",
            Attribute::Graph(_) => "graph",
            Attribute::Type(_) => "type",
            Attribute::Floats(_) => "floats",
            Attribute::Ints(_) => "ints",
            Attribute::Strings(_) => "strings",
            Attribute::Tensors(_) => "tensors",
            Attribute::Graphs(_) => "graphs",
        }
    }
}

impl From<f32> for Attribute {
    fn from(v: f32) -> Self {
        Attribute::Float(v)
    }
}
impl From<i64> for Attribute {
    fn from(v: i64) -> Self {
        Attribute::Int(v)
    }
}
impl From<&str> for Attribute {
    fn from(v: &str) -> Self {
        Attribute::String(v.to_string())
    }
}
impl From<String> for Attribute {
    fn from(v: String) -> Self {
        Attribute::String(v)
    }
}
impl From<Vec<i64>> for Attribute {
    fn from(v: Vec<i64>) -> Self {
        Attribute::Ints(v)
    }
}
impl From<Vec<f32>> for Attribute {
    fn from(v: Vec<f32>) -> Self {
        Attribute::Floats(v)
    }
}
impl From<Tensor> for Attribute {
    fn from(v: Tensor) -> Self {
        Attribute::Tensor(v)
    }
}
impl From<Network> for Attribute {
    fn from(v: Network) -> Self {
        Attribute::Graph(Arc::new(v))
    }
}

/// A layer's attributes, ordered by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Attributes(pub BTreeMap<String, Attribute>);

macro_rules! getter {
    ($name:ident, $opt:ident, $variant:ident, $t:ty) => {
        /// The attribute if present; an error if present with another kind.
        pub fn $opt(&self, name: &str) -> Result<Option<$t>, String> {
            match self.0.get(name) {
                None => Ok(None),
                Some(Attribute::$variant(v)) => Ok(Some(v.clone())),
                Some(other) => Err(format!(
                    "attribute '{name}' must be {} but is {}",
                    stringify!($variant).to_lowercase(),
                    other.kind_name()
                )),
            }
        }
        /// The attribute, or `default` when absent.
        pub fn $name(&self, name: &str, default: $t) -> Result<$t, String> {
            Ok(self.$opt(name)?.unwrap_or(default))
        }
    };
}

impl Attributes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder-style insert.
    pub fn with(mut self, name: &str, value: impl Into<Attribute>) -> Self {
        self.0.insert(name.to_string(), value.into());
        self
    }

    pub fn set(&mut self, name: &str, value: impl Into<Attribute>) {
        self.0.insert(name.to_string(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&Attribute> {
        self.0.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<Attribute> {
        self.0.remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    getter!(float, float_opt, Float, f32);
    getter!(int, int_opt, Int, i64);
    getter!(string, string_opt, String, String);
    getter!(floats, floats_opt, Floats, Vec<f32>);
    getter!(ints, ints_opt, Ints, Vec<i64>);
    getter!(strings, strings_opt, Strings, Vec<String>);

    pub fn tensor_opt(&self, name: &str) -> Result<Option<&Tensor>, String> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Attribute::Tensor(t)) => Ok(Some(t)),
            Some(other) => Err(format!("attribute '{name}' must be tensor but is {}", other.kind_name())),
        }
    }

    pub fn graph(&self, name: &str) -> Result<&Arc<Network>, String> {
        match self.0.get(name) {
            Some(Attribute::Graph(g)) => Ok(g),
            None => Err(format!("required graph attribute '{name}' is missing")),
            Some(other) => Err(format!("attribute '{name}' must be graph but is {}", other.kind_name())),
        }
    }

    /// Required int attribute.
    pub fn req_int(&self, name: &str) -> Result<i64, String> {
        self.int_opt(name)?.ok_or_else(|| format!("required attribute '{name}' is missing"))
    }

    /// Required ints attribute.
    pub fn req_ints(&self, name: &str) -> Result<Vec<i64>, String> {
        self.ints_opt(name)?.ok_or_else(|| format!("required attribute '{name}' is missing"))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Attribute)> {
        self.0.iter()
    }
}
