//! Synthetic speaker voiceprints for the demo: each speaker has a fixed unit-length
//! 192-D "voice", and every utterance is that voice plus Gaussian noise, normalised
//! again (speaker-embedding models such as ECAPA-TDNN emit unit vectors compared by
//! cosine). Reproducible from a seed, so two demo runs enrol the same speakers.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The speakers of one demo run.
#[derive(Debug)]
pub(crate) struct Voices {
    speakers: Vec<Vec<f32>>,
    /// Standard deviation of the per-utterance noise, per component.
    noise: f32,
    rng: StdRng,
}

impl Voices {
    pub(crate) fn new(seed: u64, speakers: usize, dim: usize, noise: f32) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let speakers = (0..speakers.max(1))
            .map(|_| unit((0..dim).map(|_| gaussian(&mut rng)).collect()))
            .collect();
        Self {
            speakers,
            noise,
            rng,
        }
    }

    /// One utterance of `speaker`'s voice.
    pub(crate) fn utterance(&mut self, speaker: usize) -> Vec<f32> {
        let voice = &self.speakers[speaker % self.speakers.len()];
        let scale = self.noise / (voice.len() as f32).sqrt();
        let noisy = voice
            .iter()
            .map(|v| v + scale * gaussian(&mut self.rng))
            .collect();
        unit(noisy)
    }
}

/// A standard normal sample (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
