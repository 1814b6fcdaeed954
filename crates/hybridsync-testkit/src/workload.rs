//! Deterministic workload generators.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Clustered vectors, like voiceprints: `clusters` centroids (speakers) and samples of
/// Gaussian-ish noise around them. Uniform random vectors have no neighbourhood
/// structure, so recall measured on them means nothing.
#[derive(Debug, Clone)]
pub struct Clustered {
    pub centroids: Vec<Vec<f32>>,
    pub spread: f32,
    rng: StdRng,
}

impl Clustered {
    /// `clusters` centroids of dimension `dim`, reproducible from `seed`.
    pub fn new(seed: u64, clusters: usize, dim: usize, spread: f32) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centroids = (0..clusters.max(1))
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        Self {
            centroids,
            spread,
            rng,
        }
    }

    /// A sample near centroid `cluster`.
    pub fn sample(&mut self, cluster: usize) -> Vec<f32> {
        let centroid = &self.centroids[cluster % self.centroids.len()];
        centroid
            .iter()
            .map(|c| {
                // Sum of uniforms: cheap, bounded, roughly normal.
                let noise: f32 = (0..4)
                    .map(|_| self.rng.random_range(-1.0f32..1.0))
                    .sum::<f32>()
                    / 2.0;
                c + noise * self.spread
            })
            .collect()
    }

    /// `n` samples spread round-robin over the clusters.
    pub fn samples(&mut self, n: usize) -> Vec<Vec<f32>> {
        (0..n).map(|i| self.sample(i)).collect()
    }
}
