//! Running a plan: fingerprint each stage, skip what is already done, run the rest.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Plan, stage::Context};
use crate::io::{Location, hex};
use crate::tables as table;
use crate::progress::info;

/// Options that apply to the whole run, not to one stage.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Rerun every stage even when its fingerprint matches.
    pub force: bool,
    /// No progress display and no log lines.
    pub quiet: bool,
}

/// What a stage left behind: recorded in `_state/<stage>.json` after it succeeds.
#[derive(Serialize, Deserialize)]
struct StageState {
    fingerprint: String,
    outputs: Vec<String>,
    seconds: f64,
}

/// What happened to each stage, and what the stages reported for the user.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub run_dir: String,
    pub ran: Vec<String>,
    pub skipped: Vec<String>,
    pub report: Vec<String>,
}

/// Runs `plan`, writing its tables under `<run_root>/<name>/`.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<RunSummary> {
    let root = Location::create(&plan.run_root)?;
    let run_dir = root.child(&plan.name);
    let mut summary = RunSummary { run_dir: run_dir.url().to_owned(), ..Default::default() };
    // table name -> fingerprint of the stage that wrote it
    let mut table_fp: HashMap<String, String> = HashMap::new();
    for spec in &plan.stages {
        let stage = (spec.kind.build)(spec.config.clone())?;
        let input_fps: Vec<_> = spec.inputs.values().flatten().map(|t| (t.clone(), table_fp[t].clone())).collect();
        let fingerprint = fingerprint(spec.kind.name, &spec.config, &input_fps, &stage.fingerprint_extra()?);
        for table in spec.outputs.values() {
            table_fp.insert(table.clone(), fingerprint.clone());
        }
        let state_key = format!("_state/{}.json", spec.name);
        if !options.force && is_done(&run_dir, &state_key, &fingerprint, spec.outputs.values())? {
            info(options.quiet, &format!("{}: up to date, skipped (--force reruns it)", spec.name));
            summary.skipped.push(spec.name.clone());
            continue;
        }
        // Forget the old state first: if this run is interrupted, the next one redoes the stage.
        run_dir.delete(&state_key)?;
        info(options.quiet, &format!("{}: running ({})", spec.name, spec.kind.name));
        let started = std::time::Instant::now();
        let mut ctx = Context {
            stage: &spec.name,
            run_dir: &run_dir,
            inputs: &spec.inputs,
            outputs: &spec.outputs,
            options,
            fingerprint: &fingerprint,
            report: Vec::new(),
        };
        stage.run(&mut ctx).with_context(|| format!("stage {} ({})", spec.name, spec.kind.name))?;
        summary.report.append(&mut ctx.report);
        let state = StageState {
            fingerprint,
            outputs: spec.outputs.values().cloned().collect(),
            seconds: started.elapsed().as_secs_f64(),
        };
        run_dir.put(&state_key, Bytes::from(serde_json::to_vec_pretty(&state)?))?;
        info(options.quiet, &format!("{}: done in {:.1} s", spec.name, state.seconds));
        summary.ran.push(spec.name.clone());
    }
    Ok(summary)
}

/// A stage is done when its recorded fingerprint matches and all its outputs exist.
fn is_done<'a>(dir: &Location, state_key: &str, fingerprint: &str, outputs: impl Iterator<Item = &'a String>) -> Result<bool> {
    if !dir.exists(state_key)? {
        return Ok(false);
    }
    let state: StageState = match serde_json::from_slice(&dir.get(state_key)?) {
        Ok(s) => s,
        Err(_) => return Ok(false),
    };
    if state.fingerprint != fingerprint {
        return Ok(false);
    }
    for t in outputs {
        if !table::exists(dir, t)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// SHA-256 over the code version, the stage kind, its configuration, its inputs' fingerprints
/// and any extra material the stage supplies. The documented schemas are part of the code
/// version: a table layout change must not reuse tables written in the old layout.
fn fingerprint(kind: &str, config: &toml::Table, inputs: &[(String, String)], extra: &str) -> String {
    let schemas: Vec<_> = table::all_schemas().iter().map(|s| format!("{s:?}")).collect();
    let material = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "schemas": hex(&Sha256::digest(schemas.concat().as_bytes())),
        "kind": kind,
        "config": config,
        "inputs": inputs,
        "extra": extra,
    });
    hex(&Sha256::digest(material.to_string().as_bytes()))
}

