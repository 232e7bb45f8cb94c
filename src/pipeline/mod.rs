//! The pipeline core: parse a declarative file, validate it into an ordered plan, and run its
//! stages over named tables.
//!
//! A pipeline file (see `pipelines/baseline.toml`) has a `[pipeline]` header and one
//! `[stages.<name>]` table per stage. `kind` picks the component (`ingest`, `split`, `embed`,
//! `classify`, `evaluate`); `inputs` and `outputs` map the component's slots to table names
//! (by default a slot reads and writes the table of the same name); every other key is the
//! component's own configuration, and unknown keys are errors.
//!
//! ```toml
//! [pipeline]
//! name = "baseline"
//!
//! [stages.ingest]
//! kind = "ingest"
//! dataset = "../shared/datasets/fixture_facescrub12x10"
//!
//! [stages.split]
//! kind = "split"
//! protected = ["Bill_Hader"]
//! ```
//!
//! Phases follow vector's: [`spec::parse`] checks structure and wiring without touching any
//! data, [`run::run`] builds each stage and runs it. Each output table is written to
//! `<run_root>/<pipeline name>/<table>.parquet`, and a fingerprint of each stage's
//! configuration and inputs is recorded so a rerun skips what is already done.

pub mod run;
pub mod spec;
pub mod stage;

pub use run::{RunOptions, run};
pub use spec::{Plan, parse};
