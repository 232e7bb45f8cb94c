//! cloakbench: cloak face photos and measure whether the cloak still protects anyone once a
//! face-recognition trainer adapts.

pub mod attack;
pub mod cli;
pub mod commands;
pub mod face;
pub mod io;
pub mod models;
pub mod pipeline;
pub mod progress;
pub mod rng;
pub mod runtime;
pub mod stages;
pub mod tables;
