//! Cloaks: small perturbations that make face recognisers misidentify a person.

pub mod engine;
pub mod methods;
pub mod ssim;
