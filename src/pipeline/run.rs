//! Running a plan: fingerprint each stage, skip what is already done, run the rest, and
//! account for every item that failed or was skipped.
//!
//! A stage's fingerprint is a digest of the code (every source and schema file the binary was
//! built from), its kind, its typed configuration with defaults, the fingerprints of the stages
//! that wrote its inputs, and what else it depends on (a dataset listing with each file's
//! modification time or ETag, the digests of the weight files it loads). After a stage
//! succeeds, `_state/<stage>.json` records its fingerprint and tally; a rerun skips the stage
//! when both match and its tables exist, and still counts the items it failed on. The run's
//! manifest, `_run.json`, lists every stage with its fingerprint, labels, tables and tally.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::context::{Context, RunOptions, ShardScope, Tally};
use super::plan::{Plan, PlannedStage};
use crate::io::{self, Location, hex, parquet};

/// The digest of the sources, schemas and lock file the binary was built from (build.rs).
pub const CODE_DIGEST: &str = env!("CLOAKBENCH_CODE_DIGEST");

include!(concat!(env!("OUT_DIR"), "/code_digests.rs"));

/// The digest of the code a stage kind defined in `source` (its `file!()`) depends on: its file,
/// the modules it names, theirs, and so on, with the pipeline core (build/code_deps.rs). A file
/// the build did not list (a kind defined outside src/) gets the whole crate's digest.
pub fn code_digest_of(source: &str) -> &'static str {
    SOURCE_DIGESTS.iter().find(|(file, _)| *file == source).map_or(CODE_DIGEST, |(_, digest)| digest)
}

/// What a stage left behind: recorded in `_state/<stage>.json` after it succeeds.
#[derive(Serialize, Deserialize)]
struct StageState {
    fingerprint: String,
    /// Its parts, so that a dry run can say which changed (absent in older states).
    #[serde(default)]
    parts: Option<Parts>,
    outputs: Vec<String>,
    seconds: f64,
    #[serde(default)]
    tally: Tally,
}

/// A stage's fingerprint (`value`, over all of it) and a digest of each of its parts.
#[derive(Clone, Debug)]
pub struct Fingerprint {
    pub value: String,
    parts: Parts,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Parts {
    code: String,
    config: String,
    inputs: String,
    material: String,
}

impl Fingerprint {
    /// The same parts under another value (a shard's stage: the value also covers its pictures).
    pub(super) fn with_value(&self, value: String) -> Fingerprint {
        Fingerprint { value, parts: self.parts.clone() }
    }
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageOutcome {
    pub name: String,
    pub kind: &'static str,
    pub labels: Vec<(String, String)>,
    pub fingerprint: String,
    /// false: up to date, skipped.
    pub ran: bool,
    pub seconds: f64,
    /// Tables read, by slot (what the report draws the run's wiring from).
    pub inputs: BTreeMap<String, Vec<String>>,
    pub outputs: Vec<String>,
    /// The typed configuration, defaults filled in (as fingerprinted).
    pub config: serde_json::Value,
    pub tally: Tally,
}

impl StageOutcome {
    pub(super) fn of(stage: &PlannedStage, fingerprint: &str, ran: bool, seconds: f64, tally: Tally) -> StageOutcome {
        StageOutcome {
            name: stage.name.clone(),
            kind: stage.kind.name,
            labels: stage.labels.clone(),
            fingerprint: fingerprint.to_owned(),
            ran,
            seconds,
            inputs: stage.inputs.clone(),
            outputs: stage.outputs.values().cloned().collect(),
            config: stage.stage.describe(),
            tally,
        }
    }
}

/// What happened in a run.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub run_dir: String,
    pub stages: Vec<StageOutcome>,
    /// What the stages reported for the user.
    pub report: Vec<String>,
}

impl RunSummary {
    /// Items that failed, over every stage (also those skipped as up to date).
    pub fn failed(&self) -> u64 {
        self.stages.iter().map(|s| s.tally.failed.n).sum()
    }

    /// One line per stage that failed or skipped items, naming the first few.
    pub fn failure_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for s in &self.stages {
            for (what, count) in [("failed", &s.tally.failed), ("skipped", &s.tally.skipped)] {
                if count.n > 0 {
                    let more = count.n.saturating_sub(count.examples.len() as u64);
                    let tail = if more > 0 { format!("; and {more} more") } else { String::new() };
                    lines.push(format!("{}: {} {what}: {}{tail}", s.name, count.n, count.examples.join("; ")));
                }
            }
        }
        lines
    }
}

/// Runs `plan`, writing its tables under `<run_root>/<name>/`.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<RunSummary> {
    let run_dir = run_dir(plan)?;
    let _lease = hold(&run_dir, &format!("cloakbench run {}", plan.name), options)?;
    let mut summary = RunSummary { run_dir: run_dir.url().to_owned(), ..Default::default() };
    let table_labels = table_labels(plan);
    for (stage, fingerprint) in plan.stages.iter().zip(fingerprints(plan, options.quiet)?) {
        let outcome = run_stage(stage, fingerprint, &run_dir, options, &table_labels, &mut summary.report, None)?;
        summary.stages.push(outcome);
        write_manifest(plan, &run_dir, &summary)?;
    }
    Ok(summary)
}

/// The plan's run folder, `<run_root>/<name>/` (the root is created if need be).
pub(super) fn run_dir(plan: &Plan) -> Result<Location> {
    Ok(Location::create(&plan.run_root)?.child(&plan.name))
}

/// Takes `dir` for `command` (one writer at a time) and removes the staging files a killed
/// writer left there: holding the lease, no write of ours is in flight, so what remains was
/// cut short by a kill.
pub(super) fn hold(dir: &Location, command: &str, options: &RunOptions) -> Result<io::lease::Lease> {
    let lease = io::lease::acquire(dir, "_lock", command, lease_ttl())?;
    let leftovers = dir.remove_staging_leftovers()?;
    if leftovers > 0 {
        crate::progress::info(options.quiet, &format!("removed {leftovers} staging files an interrupted run left behind"));
    }
    Ok(lease)
}

/// table -> the labels of the stage that writes it.
pub(super) fn table_labels(plan: &Plan) -> HashMap<String, Vec<(String, String)>> {
    plan.stages.iter().flat_map(|s| s.outputs.values().map(|t| (t.clone(), s.labels.clone()))).collect()
}

/// Every stage's fingerprint, in plan order.
pub(super) fn fingerprints(plan: &Plan, quiet: bool) -> Result<Vec<Fingerprint>> {
    // table -> fingerprint of the stage (and slot) that wrote it
    let mut table_fp: HashMap<String, String> = HashMap::new();
    let mut all = Vec::new();
    for stage in &plan.stages {
        let fingerprint = fingerprint(stage, &table_fp, quiet)?;
        for (slot, table) in &stage.outputs {
            table_fp.insert(table.clone(), format!("{}/{slot}", fingerprint.value));
        }
        all.push(fingerprint);
    }
    Ok(all)
}

/// Where a plan's run stands, for a dry run: what would run and why. Reads, writes nothing.
pub enum Preview {
    /// No run of this pipeline in its run folder yet (named): every stage runs.
    NoRun(String),
    /// The run folder (named), and each stage's name with why it would run (`None`: up to date).
    Stages(String, Vec<(String, Option<String>)>),
}

/// What a run of `plan` would do now, without taking its lease or writing anything.
pub fn preview(plan: &Plan, quiet: bool) -> Result<Preview> {
    let Ok(root) = Location::open(&plan.run_root) else { return Ok(Preview::NoRun(plan.run_root.clone())) };
    let run_dir = root.child(&plan.name);
    if !run_dir.exists("_run.json")? {
        return Ok(Preview::NoRun(run_dir.url().to_owned()));
    }
    let mut stages = Vec::new();
    for (stage, fingerprint) in plan.stages.iter().zip(fingerprints(plan, quiet)?) {
        stages.push((stage.name.clone(), why_it_runs(&run_dir, stage, &fingerprint)?));
    }
    Ok(Preview::Stages(run_dir.url().to_owned(), stages))
}

/// Why `stage` would run in `run_dir`, or `None` when it is up to date.
fn why_it_runs(run_dir: &Location, stage: &PlannedStage, fingerprint: &Fingerprint) -> Result<Option<String>> {
    Ok(match standing(run_dir, stage, &fingerprint.value)? {
        Standing::Done(_) => None,
        Standing::NotRun => Some("not run yet".into()),
        Standing::Unreadable => Some("its state is unreadable".into()),
        Standing::Missing(table) => Some(format!("its table {table} is missing")),
        Standing::Changed(None) => Some("changed (its state predates the record of what)".into()),
        Standing::Changed(Some(before)) => {
            let now = &fingerprint.parts;
            let changed: Vec<&str> = [
                (before.code != now.code, "its code"),
                (before.config != now.config, "its configuration"),
                (before.inputs != now.inputs, "its inputs"),
                (before.material != now.material, "its data or weights"),
            ]
            .into_iter()
            .filter_map(|(differs, what)| differs.then_some(what))
            .collect();
            Some(format!("{} changed", changed.join(", ")))
        }
    })
}

/// Runs one stage in `run_dir` unless it is up to date there; `shard` when it runs in a shard.
pub(super) fn run_stage(
    stage: &PlannedStage,
    fingerprint: Fingerprint,
    run_dir: &Location,
    options: &RunOptions,
    table_labels: &HashMap<String, Vec<(String, String)>>,
    report: &mut Vec<String>,
    shard: Option<&ShardScope>,
) -> Result<StageOutcome> {
    let state_key = state_key(stage);
    let outcome = |ran, seconds, tally| StageOutcome::of(stage, &fingerprint.value, ran, seconds, tally);
    if !options.force
        && let Standing::Done(state) = standing(run_dir, stage, &fingerprint.value)?
    {
        crate::progress::info(options.quiet, &format!("{}: up to date, skipped (--force reruns it)", stage.name));
        return Ok(outcome(false, state.seconds, state.tally));
    }
    // Forget the old state first: if this run is interrupted, the next one redoes the stage.
    run_dir.delete(&state_key)?;
    crate::progress::info(options.quiet, &format!("{}: running ({})", stage.name, stage.kind.name));
    let started = std::time::Instant::now();
    let mut ctx = Context::new(stage, run_dir, options, &fingerprint.value, table_labels, shard);
    stage.stage.run(&mut ctx).with_context(|| format!("stage {} ({})", stage.name, stage.kind.name))?;
    report.append(&mut ctx.report);
    let state = StageState {
        fingerprint: fingerprint.value.clone(),
        parts: Some(fingerprint.parts.clone()),
        outputs: stage.outputs.values().cloned().collect(),
        seconds: started.elapsed().as_secs_f64(),
        tally: ctx.tally,
    };
    run_dir.put(&state_key, Bytes::from(serde_json::to_vec_pretty(&state)?))?;
    crate::progress::info(options.quiet, &format!("{}: done in {:.1} s", stage.name, state.seconds));
    Ok(outcome(true, state.seconds, state.tally))
}

/// Where a stage stands in a run folder against its fingerprint now.
enum Standing {
    /// Its fingerprint matches and its tables exist: the recorded state.
    Done(StageState),
    NotRun,
    Unreadable,
    /// Its fingerprint matches but this table of its is gone.
    Missing(String),
    /// Its fingerprint differs: the parts it was made of (absent in older states).
    Changed(Option<Parts>),
}

fn state_key(stage: &PlannedStage) -> String {
    format!("_state/{}.json", stage.name)
}

fn standing(dir: &Location, stage: &PlannedStage, fingerprint: &str) -> Result<Standing> {
    let state_key = state_key(stage);
    if !dir.exists(&state_key)? {
        return Ok(Standing::NotRun);
    }
    let Ok(state) = serde_json::from_slice::<StageState>(&dir.get(&state_key)?) else { return Ok(Standing::Unreadable) };
    if state.fingerprint != fingerprint {
        return Ok(Standing::Changed(state.parts));
    }
    for t in stage.outputs.values() {
        if !parquet::exists(dir, t)? {
            return Ok(Standing::Missing(t.clone()));
        }
    }
    Ok(Standing::Done(state))
}

/// SHA-256 over the code the stage's kind depends on, its kind and typed configuration, its
/// inputs' fingerprints (by slot: a table's name is not its content) and the stage's own
/// material. An edit elsewhere (the report, the CLI, another stage) leaves it as it was.
fn fingerprint(stage: &PlannedStage, table_fp: &HashMap<String, String>, quiet: bool) -> Result<Fingerprint> {
    let inputs: Vec<(&String, Vec<&String>)> = stage.inputs.iter().map(|(slot, tables)| (slot, tables.iter().map(|t| &table_fp[t]).collect())).collect();
    let log = |line: &str| crate::progress::info(quiet, &format!("{}: {line}", stage.name));
    let material = stage.stage.fingerprint_material(&log).with_context(|| format!("stage {}: fingerprint", stage.name))?;
    let code = code_digest_of(stage.kind.source);
    let config = stage.stage.describe();
    let all = serde_json::json!({
        "code": code,
        "kind": stage.kind.name,
        "config": config,
        "inputs": inputs,
        "material": material,
    });
    let digest = |part: &serde_json::Value| hex(&Sha256::digest(part.to_string().as_bytes()));
    let parts = Parts {
        code: code.to_owned(),
        config: digest(&serde_json::json!([stage.kind.name, config])),
        inputs: digest(&serde_json::json!(inputs)),
        material: digest(&material),
    };
    Ok(Fingerprint { value: digest(&all), parts })
}

/// How long an S3 run lease lives unless renewed (`CLOAKBENCH_LEASE_TTL_S`, default 120 s):
/// how long a killed run blocks the next one on S3.
fn lease_ttl() -> std::time::Duration {
    let secs = std::env::var("CLOAKBENCH_LEASE_TTL_S").ok().and_then(|v| v.parse::<u64>().ok()).filter(|&s| s >= 3).unwrap_or(120);
    std::time::Duration::from_secs(secs)
}

/// `_run.json`: the run as it stands, rewritten after every stage.
pub(super) fn write_manifest(plan: &Plan, run_dir: &Location, summary: &RunSummary) -> Result<()> {
    let manifest = serde_json::json!({
        "pipeline": plan.name,
        "description": plan.description,
        "code": CODE_DIGEST,
        "version": env!("CARGO_PKG_VERSION"),
        // Whether CPU results are bitwise reproducible in this process (see crate::runtime).
        "mkl_cbwr": crate::runtime::mkl_mode(),
        "stages": summary.stages,
        "aliases": plan.aliases,
        "failed": summary.failed(),
        // S3 requests this process retried after transient faults (see io::retries).
        "s3_retries": io::retries::count(),
    });
    run_dir.put("_run.json", Bytes::from(serde_json::to_vec_pretty(&manifest)?))
}
