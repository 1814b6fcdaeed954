//! Vector specs: dimension, distance metric and stored precision per collection.

use crate::{Error, Result};

/// The distance a collection's similarity search uses. Smaller is closer for all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Squared Euclidean distance.
    L2,
    /// `1 - cos(a, b)`.
    Cosine,
    /// `1 - a·b` (inner product as a distance).
    Ip,
}

/// How the index stores vectors. The store always keeps the exact f32 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    /// Only meaningful for cosine: the index normalises vectors before quantising.
    I8,
}

/// A collection's vector configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VectorSpec {
    pub dim: usize,
    pub metric: Metric,
    pub precision: Precision,
}

impl VectorSpec {
    /// The largest supported dimension.
    pub const MAX_DIM: usize = 4096;

    /// A validated spec.
    pub fn new(dim: usize, metric: Metric, precision: Precision) -> Result<Self> {
        if dim == 0 || dim > Self::MAX_DIM {
            return Err(Error::InvalidVectorSpec {
                reason: format!("dimension {dim} is outside 1..={}", Self::MAX_DIM),
            });
        }
        if precision == Precision::I8 && metric != Metric::Cosine {
            return Err(Error::InvalidVectorSpec {
                reason: format!(
                    "i8 precision normalises vectors, so it needs the cosine metric, not {metric}"
                ),
            });
        }
        Ok(Self {
            dim,
            metric,
            precision,
        })
    }

    /// Refuses an embedding of the wrong dimension or with a NaN or infinite component.
    pub fn validate(&self, collection: &str, embedding: &[f32]) -> Result<()> {
        if embedding.len() != self.dim {
            return Err(Error::DimensionMismatch {
                collection: collection.to_owned(),
                expected: self.dim,
                got: embedding.len(),
            });
        }
        if let Some(index) = embedding.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteEmbedding {
                collection: collection.to_owned(),
                index,
            });
        }
        // Cosine distance divides by the norm: a zero vector has no direction, would
        // score 1 against every query and 0 against a zero query. L2² and inner
        // product are defined for it (its distance is the query's squared norm, and 1).
        if self.metric == Metric::Cosine && embedding.iter().all(|v| *v == 0.0) {
            return Err(Error::ZeroVector {
                collection: collection.to_owned(),
            });
        }
        Ok(())
    }
}

impl Metric {
    /// The exact distance between two equal-length vectors under this metric.
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
            Metric::Ip => 1.0 - dot(a, b),
            Metric::Cosine => {
                let norms = (dot(a, a) * dot(b, b)).sqrt();
                if norms == 0.0 {
                    1.0
                } else {
                    1.0 - dot(a, b) / norms
                }
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

crate::text::text_enum!(Metric, "metric", L2 => "l2" | "l2sq", Cosine => "cosine" | "cos", Ip => "ip");
crate::text::text_enum!(Precision, "precision", F32 => "f32", F16 => "f16", I8 => "i8");
