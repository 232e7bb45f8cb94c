//! The pipeline core: parse a declarative file, validate it into a typed plan, order and
//! fingerprint its stages, and run them over named tables. The core knows tables and stages,
//! not which stages exist: the registry (`crate::stages::KINDS`) hands the kinds in.
//!
//! A pipeline file (see `pipelines/baseline.toml`) has a `[pipeline]` header and one
//! `[stages.<name>]` table per stage. `kind` picks the component; `inputs` and `outputs` map its
//! slots to table names (by default a slot reads and writes the table of the same name);
//! `fan_out` expands it over values ([`spec`]); every other key is the component's own
//! configuration, and unknown keys are errors.
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
//! Phases follow vector's: [`spec`] reads the file (extends, overrides, fan-out) without
//! touching any data, [`plan`] types and validates every stage and its wiring, [`run`] runs the
//! plan; [`batch`] is the one resumable-batch mechanism every batch stage uses.

pub mod batch;
pub mod context;
pub mod plan;
pub mod run;
pub mod shards;
pub mod spec;
pub mod stage;

pub use batch::{Chunks, one_ahead};
pub use context::{Context, Labels, RunOptions, Tally};
pub use plan::{Plan, PlannedStage, load, parse};
pub use run::{Preview, RunSummary, preview, run};
pub use stage::{Kind, PlanError, Scope, Slot, Stage, StageConfig, check, plan_from};
