//! Cloaks: small perturbations that make face recognisers misidentify a person.

pub mod ssim;
