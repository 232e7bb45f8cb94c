//! From a pipeline file to a typed, validated, ordered [`Plan`]: every stage's configuration
//! deserialised into its kind's struct with defaults filled in and checked, every table read
//! by some stage written by exactly one other with a schema the reader accepts, stages in an
//! order where tables are written before they are read, and identical stages merged. All of
//! it happens before anything is loaded or run; a mistake is a [`PlanError`] (exit code 2).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::spec::{self, Spec, SpecStage};
use super::stage::{Kind, PlanError, Stage};
use crate::io::hex;

/// A validated pipeline.
#[derive(Clone)]
pub struct Plan {
    pub name: String,
    pub description: String,
    pub run_root: String,
    /// In an order where every input is written before it is read.
    pub stages: Vec<PlannedStage>,
    /// Tables of stages merged into an identical one: alias -> the table that holds the rows.
    pub aliases: BTreeMap<String, String>,
}

/// One stage of a plan.
#[derive(Clone)]
pub struct PlannedStage {
    pub name: String,
    pub template: String,
    /// Its fan-out values, as (key, label).
    pub labels: Vec<(String, String)>,
    pub kind: &'static Kind,
    /// slot -> the tables it reads
    pub inputs: BTreeMap<String, Vec<String>>,
    /// slot -> table
    pub outputs: BTreeMap<String, String>,
    pub stage: Arc<dyn Stage>,
}

impl Plan {
    /// Whether some stage writes `table`.
    pub fn writes(&self, table: &str) -> bool {
        self.stages.iter().any(|s| s.outputs.values().any(|t| t == table))
    }
}

/// Loads, validates and orders the pipeline file at `path` with `--set` overrides.
pub fn load(path: &Path, overrides: &[String], kinds: &'static [Kind]) -> Result<Plan, PlanError> {
    let spec = spec::load(path, overrides, kinds).map_err(|e| PlanError(format!("{}: {e}", path.display())))?;
    typed(spec, kinds).map_err(|e| PlanError(format!("{}: {e}", path.display())))
}

/// As [`load`], for pipeline text.
pub fn parse(text: &str, overrides: &[String], kinds: &'static [Kind]) -> Result<Plan, PlanError> {
    typed(spec::parse(text, overrides, kinds)?, kinds)
}

fn typed(spec: Spec, kinds: &'static [Kind]) -> Result<Plan, PlanError> {
    let mut stages = Vec::new();
    for s in spec.stages {
        let kind = kinds.iter().find(|k| k.name == s.kind).expect("spec checked the kind");
        let stage = (kind.plan)(s.config.clone()).map_err(|e| PlanError(format!("stage {}: {e}", s.name)))?;
        let wired: Vec<&str> = s.inputs.keys().map(String::as_str).collect();
        stage.validate_wiring(&wired).map_err(|e| PlanError(format!("stage {}: {e}", s.name)))?;
        let SpecStage { name, template, labels, inputs, outputs, inherits, .. } = s;
        stages.push((PlannedStage { name, template, labels, kind, inputs, outputs, stage }, inherits));
    }
    let (stages, inherits): (Vec<PlannedStage>, Vec<Vec<String>>) = stages.into_iter().unzip();
    check_schemas(&stages)?;
    let inherits: HashMap<String, Vec<String>> = stages.iter().map(|s| s.name.clone()).zip(inherits).collect();
    let mut stages = order(stages)?;
    label_from_configs(&mut stages, &inherits);
    let (stages, aliases) = merge_identical(stages);
    Ok(Plan { name: spec.header.name, description: spec.header.description, run_root: spec.header.run_root, stages, aliases })
}

/// Adds to each stage's labels the configuration values its kind labels tables with (a cloak's
/// method and mode), and those of the stages whose tables it reads without gathering them.
/// `stages` are in run order, so a producer's labels are final before its readers are seen.
fn label_from_configs(stages: &mut [PlannedStage], inherits: &HashMap<String, Vec<String>>) {
    let mut of_table: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for s in stages.iter_mut() {
        let config = s.stage.describe();
        let own = s.kind.labels.iter().filter_map(|key| {
            let text = match config.get(*key)? {
                serde_json::Value::String(v) => v.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((key.to_string(), text))
        });
        let inherited: Vec<(String, String)> = inherits[&s.name].iter().flat_map(|t| of_table.get(t).cloned().unwrap_or_default()).collect();
        for (key, value) in own.chain(inherited) {
            if !s.labels.iter().any(|(k, _)| *k == key) {
                s.labels.push((key, value));
            }
        }
        for t in s.outputs.values() {
            of_table.insert(t.clone(), s.labels.clone());
        }
    }
}

/// Every input slot reads tables whose schema it accepts.
fn check_schemas(stages: &[PlannedStage]) -> Result<(), PlanError> {
    let mut schema_of: HashMap<&str, (&str, &str)> = HashMap::new();
    for s in stages {
        for (slot, table) in &s.outputs {
            let schema = s.kind.output_slot(slot).expect("spec checked the slot").schemas[0];
            schema_of.insert(table, (schema, &s.name));
        }
    }
    for s in stages {
        for (slot, tables) in &s.inputs {
            let accepts = s.kind.input_slot(slot).expect("spec checked the slot").schemas;
            for table in tables {
                let Some((schema, writer)) = schema_of.get(table.as_str()) else {
                    return Err(PlanError(format!("stage {} reads table {table:?}, which no stage writes", s.name)));
                };
                if !accepts.contains(schema) {
                    return Err(PlanError(format!(
                        "stage {}: inputs.{slot} = {table:?}: stage {writer} writes it as {schema} rows; this slot reads {}",
                        s.name,
                        accepts.join(" or ")
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Orders stages so every table is written before it is read; file order breaks ties.
fn order(mut remaining: Vec<PlannedStage>) -> Result<Vec<PlannedStage>, PlanError> {
    let mut written: std::collections::HashSet<String> = Default::default();
    let mut ordered = Vec::new();
    while !remaining.is_empty() {
        let Some(ready) = remaining.iter().position(|s| s.inputs.values().flatten().all(|t| written.contains(t))) else {
            let names: Vec<&str> = remaining.iter().map(|s| s.name.as_str()).collect();
            return Err(PlanError(format!("stages {names:?} wait on each other's tables (a cycle)")));
        };
        let stage = remaining.remove(ready);
        written.extend(stage.outputs.values().cloned());
        ordered.push(stage);
    }
    Ok(ordered)
}

/// Stages whose kind, configuration and inputs are identical run once: the later ones are
/// dropped and their tables become aliases of the first one's.
fn merge_identical(stages: Vec<PlannedStage>) -> (Vec<PlannedStage>, BTreeMap<String, String>) {
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    // table -> identity of the (slot of the) stage that writes it
    let mut table_identity: HashMap<String, String> = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<PlannedStage> = Vec::new();
    for mut s in stages {
        for tables in s.inputs.values_mut() {
            let mut real: Vec<String> = Vec::new();
            for t in tables.iter() {
                let t = aliases.get(t).unwrap_or(t);
                if !real.contains(t) {
                    real.push(t.clone());
                }
            }
            *tables = real;
        }
        let inputs: BTreeMap<&String, Vec<&String>> = s.inputs.iter().map(|(slot, ts)| (slot, ts.iter().map(|t| &table_identity[t]).collect())).collect();
        let material = serde_json::json!({ "kind": s.kind.name, "config": s.stage.describe(), "inputs": inputs });
        let identity = hex(&Sha256::digest(material.to_string().as_bytes()));
        match seen.get(&identity) {
            Some(&first) => {
                for (slot, table) in &s.outputs {
                    aliases.insert(table.clone(), kept[first].outputs[slot].clone());
                }
            }
            None => {
                for (slot, table) in &s.outputs {
                    table_identity.insert(table.clone(), format!("{identity}/{slot}"));
                }
                seen.insert(identity, kept.len());
                kept.push(s);
            }
        }
    }
    (kept, aliases)
}
