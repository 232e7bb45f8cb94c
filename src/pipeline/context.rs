//! What a running stage sees: its wiring, the run folder, the run's options, and the tally of
//! items that failed or were skipped.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Result, anyhow};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::io::Location;
use crate::io::parquet::{self, TableWriter};
use crate::progress::{Progress, info};

/// A stage's fan-out values and tags, as (key, label).
pub type Labels = Vec<(String, String)>;

/// Options that apply to the whole run, not to one stage.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Rerun every stage even when its fingerprint matches.
    pub force: bool,
    /// No progress display and no log lines.
    pub quiet: bool,
}

/// How many items had one outcome, with the first few named.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Count {
    pub n: u64,
    pub examples: Vec<String>,
}

impl Count {
    const EXAMPLES: usize = 5;

    pub fn add(&mut self, what: String) {
        self.n += 1;
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push(what);
        }
    }

    pub fn merge(&mut self, other: Count) {
        self.n += other.n;
        let room = Self::EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }
}

/// The items of a stage that failed (the run then exits non-zero) or were skipped on purpose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub failed: Count,
    pub skipped: Count,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.failed.merge(other.failed);
        self.skipped.merge(other.skipped);
    }
}

/// Where a stage of a sharded run works: on its shard's pictures, reading the tables it does
/// not write itself from the committed run (see `super::shards`).
pub struct ShardScope {
    pub index: usize,
    /// The ids of the shard's items (the source stage's [`item_id`] of each key).
    ///
    /// [`item_id`]: super::Stage::item_id
    pub ids: HashSet<String>,
    /// The run folder whose committed tables the shard reads.
    pub committed: Location,
    /// The tables written inside the shard (read from the shard's own folder).
    pub local: HashSet<String>,
}

/// A running stage's view of the run.
pub struct Context<'a> {
    pub stage: &'a str,
    pub run_dir: &'a Location,
    pub options: &'a RunOptions,
    /// Fingerprint of this stage's configuration and inputs (names its resumable work).
    pub fingerprint: &'a str,
    inputs: &'a BTreeMap<String, Vec<String>>,
    outputs: &'a BTreeMap<String, String>,
    /// table -> the labels (fan-out values and tags) of the stage that wrote it
    table_labels: &'a HashMap<String, Labels>,
    /// Text the stage wants shown to the user as a result (printed on stdout after the run).
    pub report: Vec<String>,
    pub tally: Tally,
    shard: Option<&'a ShardScope>,
}

impl<'a> Context<'a> {
    pub(super) fn new(
        stage: &'a super::PlannedStage,
        run_dir: &'a Location,
        options: &'a RunOptions,
        fingerprint: &'a str,
        table_labels: &'a HashMap<String, Labels>,
        shard: Option<&'a ShardScope>,
    ) -> Context<'a> {
        let (inputs, outputs) = (&stage.inputs, &stage.outputs);
        Context { stage: &stage.name, run_dir, options, fingerprint, inputs, outputs, table_labels, report: Vec::new(), tally: Tally::default(), shard }
    }

    /// Whether this stage works on the item `id` (a picture's image id, which its copies keep):
    /// always, unless the run is sharded and the item is another shard's. A stage of [`Scope::Picture`] keeps
    /// only the pictures it owns in its output rows (while whole tables it reads, such as a
    /// user's training pictures for a goal, stay whole).
    ///
    /// [`Scope::Picture`]: super::Scope::Picture
    pub fn owns(&self, id: &str) -> bool {
        self.shard.is_none_or(|s| s.ids.contains(id))
    }

    /// Whether this stage accounts for what belongs to no shard (a dataset's hidden files): in a
    /// sharded run only the first shard does, so the counts add up once.
    pub fn accounts_for_unowned(&self) -> bool {
        self.shard.is_none_or(|s| s.index == 0)
    }

    /// Where table `t` is read from: the shard's folder for tables it writes, else the run's.
    fn dir_of(&self, t: &str) -> &Location {
        match self.shard {
            Some(s) if !s.local.contains(t) => &s.committed,
            _ => self.run_dir,
        }
    }

    /// The table wired to output `slot`.
    pub fn output_table(&self, slot: &str) -> Result<&str> {
        self.outputs.get(slot).map(String::as_str).ok_or_else(|| anyhow!("stage {} has no output slot {slot}", self.stage))
    }

    /// Whether input `slot` is wired (always true for required slots).
    pub fn has_input(&self, slot: &str) -> bool {
        self.inputs.contains_key(slot)
    }

    /// Reads every table wired to input `slot`, one after the other.
    pub fn read(&self, slot: &str) -> Result<Vec<RecordBatch>> {
        let tables = self.inputs.get(slot).ok_or_else(|| anyhow!("stage {} has no input slot {slot}", self.stage))?;
        let mut batches = Vec::new();
        for t in tables {
            batches.extend(parquet::read(self.dir_of(t), t)?);
        }
        Ok(batches)
    }

    /// Reads back what this stage wrote to output `slot`.
    pub fn read_output(&self, slot: &str) -> Result<Vec<RecordBatch>> {
        parquet::read(self.run_dir, self.output_table(slot)?)
    }

    /// Reads every table wired to input `slot` separately, each with the labels of the stage
    /// that wrote it (its fan-out values and tags): what a stage gathering a grid needs.
    pub fn read_labelled(&self, slot: &str) -> Result<Vec<(Labels, Vec<RecordBatch>)>> {
        let tables = self.inputs.get(slot).ok_or_else(|| anyhow!("stage {} has no input slot {slot}", self.stage))?;
        tables.iter().map(|t| Ok((self.table_labels.get(t).cloned().unwrap_or_default(), parquet::read(self.dir_of(t), t)?))).collect()
    }

    /// Writes the whole table for output `slot`.
    pub fn write(&self, slot: &str, schema: SchemaRef, batches: &[RecordBatch]) -> Result<usize> {
        parquet::write(self.run_dir, self.output_table(slot)?, schema, batches)
    }

    /// A streaming writer for output `slot`.
    pub fn writer(&self, slot: &str, schema: SchemaRef) -> Result<TableWriter> {
        TableWriter::create(self.run_dir, self.output_table(slot)?, schema)
    }

    /// The run's folder for files this stage makes (pictures): `<run>/<what>/<stage>/`.
    pub fn files_dir(&self, what: &str) -> Location {
        self.run_dir.child(&format!("{what}/{}", self.stage))
    }

    /// Where this stage keeps its training checkpoints: `<run>/checkpoints/<stage>/<fingerprint>/`,
    /// so a rerun with changed settings or inputs never resumes from another run's epochs.
    pub fn checkpoints(&self) -> Location {
        self.files_dir("checkpoints").child(&self.fingerprint[..16])
    }

    /// A progress display for `total` items of this stage.
    pub fn progress(&self, total: u64, unit: &str) -> Progress {
        Progress::new(self.stage, total, unit, self.options.quiet)
    }

    /// A log line on stderr, prefixed with the stage's name.
    pub fn log(&self, message: &str) {
        info(self.options.quiet, &format!("{}: {message}", self.stage));
    }

    /// Counts an item that failed; `what` names it and says why.
    pub fn fail(&mut self, what: String) {
        self.tally.failed.add(what);
    }

    /// Counts an item that was skipped on purpose; `what` names it and says why.
    pub fn skip(&mut self, what: String) {
        self.tally.skipped.add(what);
    }
}
