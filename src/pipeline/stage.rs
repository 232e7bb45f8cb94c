//! What a stage is: a component kind (its slots and how to build it from its configuration)
//! and the [`Context`] through which a running stage reads and writes tables.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::io::Location;
use crate::tables as table;
use crate::progress::Progress;

/// A runnable stage, built from its configuration.
pub trait Stage {
    /// Does the stage's work: reads its input slots and writes every output slot.
    fn run(&self, ctx: &mut Context) -> Result<()>;

    /// Material beyond the configuration and inputs that decides whether earlier outputs are
    /// still valid, such as the listing of a dataset. Empty by default.
    fn fingerprint_extra(&self) -> Result<String> {
        Ok(String::new())
    }
}

/// A component kind: its name, its table slots and its constructor.
pub struct Kind {
    pub name: &'static str,
    pub summary: &'static str,
    pub inputs: &'static [&'static str],
    /// Input slots read only when the pipeline file wires them (`inputs = { slot = "table" }`).
    pub optional_inputs: &'static [&'static str],
    pub outputs: &'static [&'static str],
    pub build: fn(toml::Table) -> Result<Box<dyn Stage>>,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Builds a stage from its TOML table into config struct `T` (which rejects unknown keys).
pub fn build_from<T>(table: toml::Table) -> Result<Box<dyn Stage>>
where
    T: Stage + serde::de::DeserializeOwned + 'static,
{
    Ok(Box::new(table.try_into::<T>()?))
}

pub use crate::stages::kinds;

pub fn kind(name: &str) -> Result<&'static Kind> {
    kinds().iter().find(|k| k.name == name).ok_or_else(|| anyhow!("unknown kind {name:?}; kinds are {}", kind_names()))
}

pub fn kind_names() -> String {
    kinds().iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// What a running stage sees: its wiring, the run folder and the run's options.
pub struct Context<'a> {
    pub stage: &'a str,
    pub run_dir: &'a Location,
    pub inputs: &'a BTreeMap<String, Vec<String>>,
    pub outputs: &'a BTreeMap<String, String>,
    pub options: &'a super::RunOptions,
    /// Fingerprint of this stage's configuration and inputs (names its resumable work).
    pub fingerprint: &'a str,
    /// Text the stage wants shown to the user as a result (printed on stdout after the run).
    pub report: Vec<String>,
}

impl Context<'_> {
    fn output_table(&self, slot: &str) -> &str {
        self.outputs.get(slot).unwrap_or_else(|| panic!("stage {} has no output slot {slot}", self.stage))
    }

    /// Reads every table wired to input `slot`, one after the other.
    pub fn read(&self, slot: &str) -> Result<Vec<RecordBatch>> {
        let tables = self.inputs.get(slot).unwrap_or_else(|| panic!("stage {} has no input slot {slot}", self.stage));
        let mut batches = Vec::new();
        for t in tables {
            batches.extend(table::read(self.run_dir, t)?);
        }
        Ok(batches)
    }

    /// Whether input `slot` is wired (always true for required slots).
    pub fn has_input(&self, slot: &str) -> bool {
        self.inputs.contains_key(slot)
    }

    /// Writes the whole table for output `slot`.
    pub fn write(&self, slot: &str, schema: SchemaRef, batches: &[RecordBatch]) -> Result<usize> {
        table::write(self.run_dir, self.output_table(slot), schema, batches)
    }

    /// A streaming writer for output `slot`.
    pub fn writer(&self, slot: &str, schema: SchemaRef) -> Result<table::TableWriter> {
        table::TableWriter::create(self.run_dir, self.output_table(slot), schema)
    }

    /// Resumable output for `slot`: work written in numbered parts as it is done (see [`Parts`]).
    pub fn parts(&self, slot: &str, schema: SchemaRef) -> Parts {
        let work = format!("_work/{}-{}", self.stage, &self.fingerprint[..16]);
        Parts { dir: self.run_dir.child(&work), run_dir: self.run_dir.clone(), table: self.output_table(slot).to_owned(), schema }
    }

    /// A progress display for `total` items of this stage.
    pub fn progress(&self, total: u64, unit: &str) -> Progress {
        Progress::new(self.stage, total, unit, self.options.quiet)
    }
}

/// An output written as numbered parts while the stage works, so that an interrupted stage
/// resumes where it stopped instead of starting over. Parts live in
/// `_work/<stage>-<fingerprint>/`: a changed configuration or input never reuses them.
/// [`Parts::finish`] joins them, in order, into the output table and removes them.
pub struct Parts {
    dir: Location,
    run_dir: Location,
    table: String,
    schema: SchemaRef,
}

impl Parts {
    /// Parts are named after their table, so one stage can keep parts of several outputs.
    fn key(&self, k: usize) -> String {
        format!("{}-part-{k:06}", self.table)
    }

    /// Whether part `k` was completed by an earlier (interrupted) run.
    pub fn is_done(&self, k: usize) -> Result<bool> {
        table::exists(&self.dir, &self.key(k))
    }

    /// Writes part `k` (atomically).
    pub fn write(&self, k: usize, batches: &[RecordBatch]) -> Result<()> {
        table::write(&self.dir, &self.key(k), self.schema.clone(), batches).map(|_| ())
    }

    /// Reads back part `k`, written by this run or an interrupted one.
    pub fn read(&self, k: usize) -> Result<Vec<RecordBatch>> {
        table::read(&self.dir, &self.key(k))
    }

    /// Joins parts `0..n` into the output table, then removes them; returns the row count.
    pub fn finish(self, n: usize) -> Result<usize> {
        let mut writer = table::TableWriter::create(&self.run_dir, &self.table, self.schema.clone())?;
        for k in 0..n {
            for batch in self.read(k)? {
                writer.write(&batch)?;
            }
        }
        let rows = writer.finish()?;
        let own = format!("{}-part-", self.table);
        for entry in self.dir.list()?.into_iter().filter(|e| e.key.starts_with(&own)) {
            self.dir.delete(&entry.key)?;
        }
        Ok(rows)
    }
}
