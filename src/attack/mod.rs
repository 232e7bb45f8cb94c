pub mod cloaker;
pub mod engine;
pub mod methods;
pub mod ssim;
