//! Sharded runs: a plan divided among independent shard tasks that an array scheduler (Slurm,
//! a Kubernetes Indexed Job, AWS Batch) starts, and a commit that makes their work one run.
//!
//! * [`plan`] lists the dataset once (its source stage's sorted keys), cuts it into `N`
//!   contiguous shards and writes `<run>/plan.json`, create-only: a run's plan never changes.
//! * A stage of [`Scope::Picture`] runs in shards; a stage of [`Scope::Dataset`] runs at commit.
//!   A picture stage that reads a dataset stage's table (the cloak reads the split) waits for
//!   that commit, so a plan runs in *phases*: the shards of phase 0, a commit, the shards of
//!   phase 1, a commit, and so on ([`steps`]).
//! * [`run_shard`] runs the picture stages of the current phase on the shard's own pictures, in
//!   `<run>/_shards/phase-<p>/shard-<k>/`, with the run's usual resume (chunk markers inside
//!   each stage, `_state` per stage) and one writer per shard (a lease). Last, it writes the
//!   shard's marker `<run>/_shards/phase-<p>/shard-<k>.json` with a create-only put: its parts,
//!   their row counts and digests. A shard whose marker exists is done and exits at once.
//! * [`commit`] checks every marker of the phase and every part's digest, writes each table's
//!   manifest (`<run>/<table>/_manifest.json`), runs the phase's dataset stages, and after the
//!   last phase writes `_run.json` and then `_SUCCESS`. It can be rerun at any point.
//!
//! Readers read a sharded table only through its manifest (`crate::io::parquet`), which is
//! written after every part it lists is whole: no reader sees a table in part.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::context::{RunOptions, ShardScope, Tally};
use super::plan::Plan;
use super::run::{self, RunSummary, StageOutcome};
use super::stage::{PlanError, Scope};
use crate::io::parquet::{self, Part, TableManifest};
use crate::io::{self, Location, hex};

/// The run's plan: immutable once written.
pub const PLAN_KEY: &str = "plan.json";
/// Written last by the commit of the last phase: the run is complete.
pub const SUCCESS_KEY: &str = "_SUCCESS";

/// Where a stage runs in a sharded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// In every shard of phase `p`.
    Shards(usize),
    /// Once, at the commit that follows the shards of phase `p`.
    Commit(usize),
}

/// `plan.json`: what every shard and the commit check themselves against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub pipeline: String,
    /// Digest of the code and of every stage's kind, wiring and typed configuration.
    pub fingerprint: String,
    /// The stage whose items are divided.
    pub source: String,
    pub shards: usize,
    pub phases: usize,
    /// Items over all shards.
    pub items: usize,
    /// Shard `k`'s keys: contiguous runs of the sorted listing.
    pub keys: Vec<Vec<String>>,
}

/// What one shard of one phase left: written last, create-only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardMarker {
    pub phase: usize,
    pub shard: usize,
    /// Who wrote it: the host, the process and the scheduler's attempt, for the record.
    pub attempt: String,
    /// table -> its part written by this shard
    pub parts: BTreeMap<String, Part>,
    /// stage -> what it failed on or skipped in this shard
    pub tallies: BTreeMap<String, Tally>,
    pub seconds: f64,
}

/// What the commit of one phase did, stage by stage (`_commit/phase-<p>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PhaseRecord {
    /// stage -> (ran, seconds, tally)
    stages: Vec<(String, bool, f64, Tally)>,
}

/// What a commit achieved.
pub enum Committed {
    /// Every phase is committed and `_SUCCESS` written.
    Done(RunSummary),
    /// Phase `p` is committed; the shards of phase `p + 1` are due.
    NextPhase(usize, RunSummary),
}

/// Each stage's step, in plan order; the number of phases is the last shard phase plus one.
pub fn steps(plan: &Plan) -> Vec<Step> {
    let mut by_table: HashMap<&str, Step> = HashMap::new();
    let mut steps = Vec::new();
    for stage in &plan.stages {
        let inputs: Vec<Step> = stage.inputs.values().flatten().filter_map(|t| by_table.get(t.as_str()).copied()).collect();
        let step = match stage.kind.scope {
            // A picture stage runs in the phase of its picture inputs, after the commit of its
            // dataset inputs.
            Scope::Picture => Step::Shards(
                inputs
                    .iter()
                    .map(|s| match *s {
                        Step::Shards(p) => p,
                        Step::Commit(p) => p + 1,
                    })
                    .max()
                    .unwrap_or(0),
            ),
            Scope::Dataset => Step::Commit(
                inputs
                    .iter()
                    .map(|s| match *s {
                        Step::Shards(p) | Step::Commit(p) => p,
                    })
                    .max()
                    .unwrap_or(0),
            ),
        };
        for t in stage.outputs.values() {
            by_table.insert(t, step);
        }
        steps.push(step);
    }
    steps
}

pub fn phases(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|s| match *s {
            Step::Shards(p) | Step::Commit(p) => p + 1,
        })
        .max()
        .unwrap_or(1)
}

/// Digest of every stage (the code its kind depends on, kind, wiring, typed configuration with
/// defaults): a shard of another pipeline, of the same one with other settings, or run by a
/// binary whose stages would compute otherwise, refuses this plan.
pub fn pipeline_fingerprint(plan: &Plan) -> String {
    let stages: Vec<serde_json::Value> = plan
        .stages
        .iter()
        .map(|s| {
            let code = run::code_digest_of(s.kind.source);
            serde_json::json!({ "name": s.name, "code": code, "kind": s.kind.name, "inputs": s.inputs, "outputs": s.outputs, "config": s.stage.describe() })
        })
        .collect();
    let all = serde_json::json!({ "pipeline": plan.name, "stages": stages });
    hex(&Sha256::digest(all.to_string().as_bytes()))
}

/// The one stage that lists a dataset (its index in the plan), and its keys.
fn source_keys(plan: &Plan) -> Result<(usize, Vec<String>)> {
    let mut sources = Vec::new();
    for (i, stage) in plan.stages.iter().enumerate() {
        if let Some(keys) = stage.stage.source_keys().with_context(|| format!("stage {}: listing", stage.name))? {
            sources.push((i, keys));
        }
    }
    match sources.len() {
        1 => Ok(sources.pop().expect("one source")),
        0 => Err(PlanError("a sharded run needs a stage that reads a dataset (ingest); this pipeline has none".into()).into()),
        _ => {
            let names: Vec<&str> = sources.iter().map(|(i, _)| plan.stages[*i].name.as_str()).collect();
            Err(PlanError(format!("a sharded run divides one dataset; this pipeline reads {}: {}", names.len(), names.join(", "))).into())
        }
    }
}

/// `n` sorted keys cut into `shards` contiguous runs whose sizes differ by at most one.
pub fn divide(keys: &[String], shards: usize) -> Vec<Vec<String>> {
    (0..shards).map(|k| keys[k * keys.len() / shards..(k + 1) * keys.len() / shards].to_vec()).collect()
}

/// Writes the run's `plan.json` (`shards` shards) unless an identical plan is there; a
/// different plan already there is an error: a run's plan never changes.
pub fn plan(plan: &Plan, shards: usize) -> Result<(ShardPlan, String)> {
    let run_dir = run::run_dir(plan)?;
    let (source, mut keys) = source_keys(plan)?;
    keys.sort();
    if shards == 0 || shards > keys.len() {
        return Err(PlanError(format!("--shards {shards}: must be within 1..={} (the dataset's items)", keys.len())).into());
    }
    let steps = steps(plan);
    let shard_plan = ShardPlan {
        pipeline: plan.name.clone(),
        fingerprint: pipeline_fingerprint(plan),
        source: plan.stages[source].name.clone(),
        shards,
        phases: phases(&steps),
        items: keys.len(),
        keys: divide(&keys, shards),
    };
    let url = run_dir.url_of(PLAN_KEY);
    if !run_dir.put_new(PLAN_KEY, Bytes::from(serde_json::to_vec_pretty(&shard_plan)?))? {
        let existing = read_plan(&run_dir)?;
        if existing != shard_plan {
            return Err(PlanError(format!(
                "{url} already holds another plan ({} shards, fingerprint {}): a run's plan never changes; choose another --run-root, or remove that run",
                existing.shards,
                &existing.fingerprint[..12]
            ))
            .into());
        }
    }
    Ok((shard_plan, url))
}

fn read_plan(run_dir: &Location) -> Result<ShardPlan> {
    if !run_dir.exists(PLAN_KEY)? {
        return Err(PlanError(format!("{}: no plan: run `cloakbench plan PIPELINE --shards N` first", run_dir.url_of(PLAN_KEY))).into());
    }
    serde_json::from_slice(&run_dir.get(PLAN_KEY)?).with_context(|| format!("{}: not a cloakbench plan", run_dir.url_of(PLAN_KEY)))
}

/// The run's plan, checked against the pipeline as loaded now.
fn checked_plan(plan: &Plan, run_dir: &Location) -> Result<ShardPlan> {
    let shard_plan = read_plan(run_dir)?;
    let fingerprint = pipeline_fingerprint(plan);
    if shard_plan.fingerprint != fingerprint {
        return Err(PlanError(format!(
            "{}: planned for another pipeline or other settings (fingerprint {}, this one {}): use the same file, --set values and binary as `cloakbench plan`",
            run_dir.url_of(PLAN_KEY),
            &shard_plan.fingerprint[..12],
            &fingerprint[..12]
        ))
        .into());
    }
    Ok(shard_plan)
}

fn commit_key(phase: usize) -> String {
    format!("_commit/phase-{phase}.json")
}

fn shard_folder(phase: usize, shard: usize) -> String {
    format!("_shards/phase-{phase}/shard-{shard:05}")
}

fn marker_key(phase: usize, shard: usize) -> String {
    format!("{}.json", shard_folder(phase, shard))
}

/// The first phase whose commit is not written (`phases` when all are).
fn current_phase(run_dir: &Location, phases: usize) -> Result<usize> {
    for p in 0..phases {
        if !run_dir.exists(&commit_key(p))? {
            return Ok(p);
        }
    }
    Ok(phases)
}

/// What a shard did.
pub enum ShardOutcome {
    /// It ran (or resumed) and wrote its marker.
    Ran { phase: usize, marker: String, tally: Tally },
    /// Its marker was already there.
    AlreadyDone { phase: usize },
    /// The whole run is committed.
    RunComplete,
}

/// Runs shard `index` of the current phase (see the module).
pub fn run_shard(plan: &Plan, index: usize, expected_shards: Option<usize>, options: &RunOptions) -> Result<ShardOutcome> {
    let run_dir = run::run_dir(plan)?;
    let shard_plan = checked_plan(plan, &run_dir)?;
    if let Some(n) = expected_shards.filter(|&n| n != shard_plan.shards) {
        return Err(PlanError(format!("{}: planned with {} shards, this task expects {n}", run_dir.url_of(PLAN_KEY), shard_plan.shards)).into());
    }
    if index >= shard_plan.shards {
        return Err(PlanError(format!("shard {index}: the plan has shards 0..{}", shard_plan.shards)).into());
    }
    let phase = current_phase(&run_dir, shard_plan.phases)?;
    if phase == shard_plan.phases {
        return Ok(ShardOutcome::RunComplete);
    }
    let marker = marker_key(phase, index);
    if run_dir.exists(&marker)? {
        return Ok(ShardOutcome::AlreadyDone { phase });
    }
    let started = std::time::Instant::now();
    let shard_dir = run_dir.child(&shard_folder(phase, index));
    let _lease = run::hold(&shard_dir, &format!("cloakbench run {} --shard {index}", plan.name), options)?;
    let steps = steps(plan);
    let here: Vec<usize> = (0..plan.stages.len()).filter(|&i| steps[i] == Step::Shards(phase)).collect();
    let source = plan
        .stages
        .iter()
        .find(|s| s.name == shard_plan.source)
        .with_context(|| format!("the plan's source stage {} is not in the pipeline", shard_plan.source))?;
    let scope = ShardScope {
        index,
        ids: shard_plan.keys[index].iter().map(|k| source.stage.item_id(k)).collect(),
        committed: run_dir.clone(),
        local: here.iter().flat_map(|&i| plan.stages[i].outputs.values().cloned()).collect(),
    };
    // Inside the shard a stage's work also depends on which pictures the shard holds.
    let keys_digest = hex(&Sha256::digest(shard_plan.keys[index].join("\n").as_bytes()));
    let fingerprints = run::fingerprints(plan, options.quiet)?;
    let table_labels = run::table_labels(plan);
    let mut report = Vec::new();
    let (mut parts, mut tallies, mut tally) = (BTreeMap::new(), BTreeMap::new(), Tally::default());
    for &i in &here {
        let stage = &plan.stages[i];
        let fingerprint = fingerprints[i].with_value(hex(&Sha256::digest(format!("{}/shard/{keys_digest}", fingerprints[i].value).as_bytes())));
        let outcome = run::run_stage(stage, fingerprint, &shard_dir, options, &table_labels, &mut report, Some(&scope))?;
        for table in stage.outputs.values() {
            let mut part = parquet::describe_part(&shard_dir, &format!("{table}.parquet"))?;
            part.key = format!("{}/{}", shard_folder(phase, index), part.key);
            parts.insert(table.clone(), part);
        }
        tally.merge(outcome.tally.clone());
        tallies.insert(stage.name.clone(), outcome.tally);
    }
    let done = ShardMarker { phase, shard: index, attempt: attempt(), parts, tallies, seconds: started.elapsed().as_secs_f64() };
    if !run_dir.put_new(&marker, Bytes::from(serde_json::to_vec_pretty(&done)?))? {
        crate::progress::info(options.quiet, &format!("shard {index}: another attempt committed it first; its marker stands"));
    }
    Ok(ShardOutcome::Ran { phase, marker: run_dir.url_of(&marker), tally })
}

/// Host, process and the scheduler's restart count, when it gives one.
fn attempt() -> String {
    let host = io::lease::hostname();
    let restarts = ["SLURM_RESTART_COUNT", "AWS_BATCH_JOB_ATTEMPT"].iter().find_map(|v| std::env::var(v).ok().map(|n| format!(" {v}={n}")));
    format!("{host} pid {}{}", std::process::id(), restarts.unwrap_or_default())
}

/// Commits what the shards wrote, phase by phase (see the module).
pub fn commit(plan: &Plan, options: &RunOptions) -> Result<Committed> {
    let run_dir = run::run_dir(plan)?;
    let _lease = run::hold(&run_dir, &format!("cloakbench commit {}", plan.name), options)?;
    let shard_plan = checked_plan(plan, &run_dir)?;
    let steps = steps(plan);
    let fingerprints = run::fingerprints(plan, options.quiet)?;
    let table_labels = run::table_labels(plan);
    let mut summary = RunSummary { run_dir: run_dir.url().to_owned(), ..Default::default() };
    for phase in 0..shard_plan.phases {
        if run_dir.exists(&commit_key(phase))? {
            let done: PhaseRecord =
                serde_json::from_slice(&run_dir.get(&commit_key(phase))?).with_context(|| format!("{}: unreadable", run_dir.url_of(&commit_key(phase))))?;
            for (name, ran, seconds, tally) in done.stages {
                let i = plan
                    .stages
                    .iter()
                    .position(|s| s.name == name)
                    .with_context(|| format!("{}: names a stage {name} the plan lacks", run_dir.url_of(&commit_key(phase))))?;
                summary.stages.push(StageOutcome::of(&plan.stages[i], &fingerprints[i].value, ran, seconds, tally));
            }
            continue;
        }
        let mut outcomes = commit_shards(plan, &steps, &fingerprints, &shard_plan, &run_dir, phase)?;
        for (i, stage) in plan.stages.iter().enumerate().filter(|(i, _)| steps[*i] == Step::Commit(phase)) {
            outcomes.push(run::run_stage(stage, fingerprints[i].clone(), &run_dir, options, &table_labels, &mut summary.report, None)?);
        }
        let record = PhaseRecord { stages: outcomes.iter().map(|o| (o.name.clone(), o.ran, o.seconds, o.tally.clone())).collect() };
        run_dir.put(&commit_key(phase), Bytes::from(serde_json::to_vec_pretty(&record)?))?;
        summary.stages.extend(outcomes);
        crate::progress::info(options.quiet, &format!("commit: phase {phase} of {} committed", shard_plan.phases));
        if phase + 1 < shard_plan.phases {
            return Ok(Committed::NextPhase(phase, summary));
        }
    }
    run::write_manifest(plan, &run_dir, &summary)?;
    run_dir.put(SUCCESS_KEY, Bytes::new())?;
    Ok(Committed::Done(summary))
}

/// Checks every shard marker of `phase` and every part's digest, then writes the manifest of
/// each table the phase's shards wrote. Returns the shard stages' outcomes, tallies summed.
fn commit_shards(
    plan: &Plan,
    steps: &[Step],
    fingerprints: &[run::Fingerprint],
    shard_plan: &ShardPlan,
    run_dir: &Location,
    phase: usize,
) -> Result<Vec<StageOutcome>> {
    let mut markers = Vec::new();
    let mut missing = Vec::new();
    for k in 0..shard_plan.shards {
        let key = marker_key(phase, k);
        match run_dir.exists(&key)? {
            true => markers
                .push(serde_json::from_slice::<ShardMarker>(&run_dir.get(&key)?).with_context(|| format!("{}: not a shard marker", run_dir.url_of(&key)))?),
            false => missing.push(k),
        }
    }
    if !missing.is_empty() {
        let named: Vec<String> = missing.iter().take(10).map(usize::to_string).collect();
        let more = if missing.len() > 10 { format!(" and {} more", missing.len() - 10) } else { String::new() };
        bail!(
            "phase {phase}: {} of {} shards are not done (shard {}{more}): rerun them (`cloakbench run PIPELINE --shard K`), then commit again",
            missing.len(),
            shard_plan.shards,
            named.join(", ")
        );
    }
    let mut outcomes = Vec::new();
    for (i, stage) in plan.stages.iter().enumerate().filter(|(i, _)| steps[*i] == Step::Shards(phase)) {
        let mut tally = Tally::default();
        for m in &markers {
            tally.merge(m.tallies.get(&stage.name).cloned().unwrap_or_default());
        }
        for table in stage.outputs.values() {
            write_table_manifest(run_dir, table, &markers)?;
        }
        outcomes.push(StageOutcome::of(stage, &fingerprints[i].value, true, markers.iter().map(|m| m.seconds).sum(), tally));
    }
    Ok(outcomes)
}

/// Verifies the parts of `table` the markers list (present, same digest) and writes its
/// manifest: the parts in shard order.
fn write_table_manifest(run_dir: &Location, table: &str, markers: &[ShardMarker]) -> Result<()> {
    let mut parts = Vec::new();
    for m in markers {
        let listed = m.parts.get(table).with_context(|| format!("shard {} of phase {}: its marker lists no part of {table}", m.shard, m.phase))?;
        let found = parquet::describe_part(run_dir, &listed.key)?;
        if found.sha256 != listed.sha256 || found.rows != listed.rows {
            bail!("{}: changed after shard {} committed it (digest or row count differs): rerun that shard", run_dir.url_of(&listed.key), m.shard);
        }
        parts.push(found);
    }
    let manifest = TableManifest { table: table.to_owned(), rows: parts.iter().map(|p| p.rows).sum(), parts };
    run_dir.put(&parquet::manifest_key(table), Bytes::from(serde_json::to_vec_pretty(&manifest)?))
}

/// Resolves `--shard auto` from the array scheduler's environment: Kubernetes Indexed Jobs
/// (`JOB_COMPLETION_INDEX`), Slurm arrays (`SLURM_ARRAY_TASK_ID`), AWS Batch array jobs
/// (`AWS_BATCH_JOB_ARRAY_INDEX`). Also returns the array's size when the scheduler says it.
pub fn shard_from_env(get: impl Fn(&str) -> Option<String>) -> Result<(usize, Option<usize>), PlanError> {
    for var in ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID", "AWS_BATCH_JOB_ARRAY_INDEX"] {
        if let Some(value) = get(var) {
            let index = value.trim().parse::<usize>().map_err(|_| PlanError(format!("--shard auto: {var}={value:?} is not a shard index")))?;
            let count = (var == "SLURM_ARRAY_TASK_ID").then(|| get("SLURM_ARRAY_TASK_COUNT").and_then(|c| c.trim().parse().ok())).flatten();
            return Ok((index, count));
        }
    }
    Err(PlanError("--shard auto: none of JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID, AWS_BATCH_JOB_ARRAY_INDEX is set; give --shard K".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The shards' keys cover the listing once: every key in exactly one shard.
    fn check_cover(shard_plan: &ShardPlan) -> Result<()> {
        let mut seen = HashSet::new();
        for (k, keys) in shard_plan.keys.iter().enumerate() {
            for key in keys {
                if !seen.insert(key) {
                    bail!("plan: {key} is in two shards (the second is {k})");
                }
            }
        }
        if seen.len() != shard_plan.items {
            bail!("plan: the shards hold {} items, the listing {}", seen.len(), shard_plan.items);
        }
        Ok(())
    }

    #[test]
    fn shards_cover_the_listing_once_and_differ_by_at_most_one() {
        let keys: Vec<String> = (0..103).map(|i| format!("id{:02}/p{i:03}.jpg", i % 7)).collect();
        for n in [1, 2, 7, 10, 103] {
            let shards = divide(&keys, n);
            assert_eq!(shards.len(), n);
            assert_eq!(shards.concat(), keys, "in order, every key once");
            let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            let plan = ShardPlan { pipeline: "p".into(), fingerprint: "f".into(), source: "s".into(), shards: n, phases: 1, items: keys.len(), keys: shards };
            check_cover(&plan).unwrap();
        }
        let mut bad =
            ShardPlan { pipeline: "p".into(), fingerprint: "f".into(), source: "s".into(), shards: 2, phases: 1, items: 3, keys: divide(&keys[..3], 2) };
        bad.keys[1].push(keys[0].clone());
        assert!(check_cover(&bad).unwrap_err().to_string().contains("in two shards"));
    }

    #[test]
    fn the_shard_index_comes_from_whichever_scheduler_set_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(shard_from_env(env(&[("JOB_COMPLETION_INDEX", "7")])).unwrap(), (7, None));
        assert_eq!(shard_from_env(env(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "4")])).unwrap(), (3, Some(4)));
        assert_eq!(shard_from_env(env(&[("AWS_BATCH_JOB_ARRAY_INDEX", "0")])).unwrap(), (0, None));
        assert!(shard_from_env(env(&[("SLURM_ARRAY_TASK_ID", "x")])).unwrap_err().0.contains("not a shard index"));
        assert!(shard_from_env(env(&[])).unwrap_err().0.contains("give --shard K"));
    }
}
