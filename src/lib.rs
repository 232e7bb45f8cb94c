//! cloakbench: cloak face photos and measure whether the cloak still protects anyone once a
//! face-recognition trainer adapts.
//!
//! The crate is laid out as the pipeline runs, in layers; a module imports only from the
//! layers below it, and no stage imports another stage:
//!
//! | layer | modules | role |
//! |-------|---------|------|
//! | the binary | [`cli`], [`commands`] | flags in, one function per command, an exit code out |
//! | report | [`report`] | a run's tables as one HTML page: plots, sortable tables, before/after pictures |
//! | stages | [`stages`] | the registry, and one module per stage kind: its configuration, work and tests |
//! | core | [`pipeline`] | parse, validate into a typed plan, order, fingerprint, run, resume in chunks |
//! | shared parts | [`tables`], [`attack`] | one module per table; the one attack engine and its methods |
//! | faces | [`face`] | MTCNN and the differentiable alignments |
//! | models | [`models`] | one file per architecture, model cards, users' TorchScript models |
//! | data plane | [`io`] | local and S3 locations, listing, decoding, Parquet, picture loading |
//! | leaves | [`progress`], [`rng`], [`runtime`] | progress lines, the seeded generator, MKL's reproducible mode |
//!
//! Tables are documented in `schemas/`; pipelines live in `pipelines/`.

pub mod attack;
pub mod cli;
pub mod commands;
pub mod face;
pub mod io;
pub mod learn;
pub mod models;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod stages;
pub mod tables;
