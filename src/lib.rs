//! cloakbench: cloak face photos and measure whether the cloak still protects anyone once a
//! face-recognition trainer adapts.
//!
//! The crate is laid out as the pipeline runs. [`pipeline`] is the small core that parses a
//! declarative file, orders its stages and runs them over named tables; each stage module
//! holds its configuration, its work and its tests:
//!
//! | module       | stages / role                                                         |
//! |--------------|-----------------------------------------------------------------------|
//! | [`io`]       | `ingest`; local and S3 locations, image decoding, Parquet tables      |
//! | [`train`]    | `split` (FaceScrub 70/30 protocol), `classify` (1-NN, linear probe)   |
//! | [`embed`]    | `embed`: pictures through a face model, batched, CUDA when present    |
//! | [`evaluate`] | `evaluate`: accuracy per identity, protection rates                   |
//! | [`models`]   | the model zoo: architectures, weights, model cards                    |
//!
//! Tables are documented in `schemas/`; pipelines live in `pipelines/`.

pub mod bench;
pub mod cli;
pub mod cloak;
pub mod detect;
pub mod embed;
pub mod evaluate;
pub mod io;
pub mod models;
pub mod pipeline;
pub mod progress;
pub mod train;
