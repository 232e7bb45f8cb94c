//! Pipeline files: raw TOML, `--set` overrides, and validation into an ordered [`Plan`].

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use super::stage::{self, Kind};

/// A validated pipeline: stages in an order where every input is produced before it is read.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: String,
    pub run_root: String,
    pub stages: Vec<StageSpec>,
}

/// One stage of a plan, wired to table names; `config` is the component's own settings.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    pub kind: &'static Kind,
    /// slot -> the tables it reads (usually one; e.g. several models' embeddings)
    pub inputs: BTreeMap<String, Vec<String>>,
    /// slot -> table
    pub outputs: BTreeMap<String, String>,
    pub config: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_run_root")]
    run_root: String,
}

fn default_run_root() -> String {
    "runs".into()
}

/// Parses pipeline text, applies `key=value` overrides, and validates the result.
///
/// An override key is a dotted path into the file: `stages.ingest.dataset`, or for short
/// `ingest.dataset` (a stage name) and `run_root` (a header key). Its value is read as TOML
/// when it parses as such (`7`, `true`, `["a","b"]`), else as a plain string.
pub fn parse(text: &str, overrides: &[String]) -> Result<Plan> {
    let mut doc: toml::Table = toml::from_str(text).context("not a valid pipeline file")?;
    for item in overrides {
        apply_override(&mut doc, item).with_context(|| format!("--set {item}"))?;
    }
    validate(doc)
}

fn apply_override(doc: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').ok_or_else(|| anyhow!("expected key=value"))?;
    let mut path: Vec<&str> = key.trim().split('.').collect();
    let is_stage = doc.get("stages").and_then(|s| s.get(path[0])).is_some();
    if is_stage {
        path.insert(0, "stages");
    } else if path.len() == 1 {
        path.insert(0, "pipeline");
    }
    let value = parse_value(raw.trim());
    let (last, parents) = path.split_last().expect("split never yields an empty path");
    let mut table = doc;
    for part in parents {
        table = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| anyhow!("{part} is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn validate(mut doc: toml::Table) -> Result<Plan> {
    let header: Header = doc
        .remove("pipeline")
        .ok_or_else(|| anyhow!("missing [pipeline] table with a name"))?
        .try_into()
        .context("[pipeline]")?;
    if header.name.is_empty() || !header.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
        bail!("[pipeline] name {:?}: use letters, digits, - and _ only (it names the run folder)", header.name);
    }
    let stages = match doc.remove("stages") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => bail!("stages must be a table of [stages.<name>] tables"),
        None => bail!("no stages: add [stages.<name>] tables"),
    };
    if let Some(extra) = doc.keys().next() {
        bail!("unknown top-level key {extra:?} (expected [pipeline] and [stages.*])");
    }
    let specs = stages
        .into_iter()
        .map(|(name, value)| stage_spec(&name, value).with_context(|| format!("[stages.{name}]")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan { name: header.name, description: header.description, run_root: header.run_root, stages: order(specs)? })
}

fn stage_spec(name: &str, value: toml::Value) -> Result<StageSpec> {
    let mut table = match value {
        toml::Value::Table(t) => t,
        _ => bail!("must be a table"),
    };
    let kind_name = match table.remove("kind") {
        Some(toml::Value::String(k)) => k,
        _ => bail!("needs kind = one of {}", stage::kind_names()),
    };
    let kind = stage::kind(&kind_name)?;
    let inputs = wiring(table.remove("inputs"), kind.inputs, kind.optional_inputs, "inputs")?;
    let outputs = wiring(table.remove("outputs"), kind.outputs, &[], "outputs")?
        .into_iter()
        .map(|(slot, mut tables)| match tables.len() {
            1 => Ok((slot, tables.remove(0))),
            _ => bail!("outputs: slot {slot:?} must name exactly one table"),
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    // Build once now so that config errors (unknown keys, wrong types) surface before any work.
    (kind.build)(table.clone())?;
    Ok(StageSpec { name: name.to_owned(), kind, inputs, outputs, config: table })
}

/// A slot names one table, or (inputs only) a list of tables read one after the other.
#[derive(Deserialize)]
#[serde(untagged)]
enum Tables {
    One(String),
    Many(Vec<String>),
}

/// Maps each slot of a component to table names: the slot's own name unless the file says
/// otherwise. Optional slots are wired only when the file names them.
fn wiring(value: Option<toml::Value>, slots: &[&str], optional: &[&str], what: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let given: BTreeMap<String, Tables> = match value {
        None => BTreeMap::new(),
        Some(v) => v.try_into().with_context(|| format!("{what} must map slot names to table names"))?,
    };
    if let Some(unknown) = given.keys().find(|k| !slots.contains(&k.as_str()) && !optional.contains(&k.as_str())) {
        bail!("{what}: unknown slot {unknown:?} (this kind has {slots:?}, optional {optional:?})");
    }
    let mut wired: BTreeMap<String, Vec<String>> = given
        .into_iter()
        .map(|(slot, t)| (slot, match t { Tables::One(t) => vec![t], Tables::Many(ts) => ts }))
        .collect();
    if let Some((slot, _)) = wired.iter().find(|(_, t)| t.is_empty()) {
        bail!("{what}: slot {slot:?} names no table");
    }
    for slot in slots {
        wired.entry(slot.to_string()).or_insert_with(|| vec![slot.to_string()]);
    }
    Ok(wired)
}

/// Orders stages so every table is produced before it is read; file order breaks ties.
fn order(specs: Vec<StageSpec>) -> Result<Vec<StageSpec>> {
    let mut producer: HashMap<&str, &str> = HashMap::new();
    for s in &specs {
        for table in s.outputs.values() {
            if let Some(other) = producer.insert(table, &s.name) {
                bail!("table {table:?} is written by both stage {other} and stage {}", s.name);
            }
        }
    }
    for s in &specs {
        for table in s.inputs.values().flatten() {
            if !producer.contains_key(table.as_str()) {
                bail!("stage {} reads table {table:?}, which no stage writes", s.name);
            }
        }
    }
    let mut done: Vec<String> = Vec::new();
    let mut remaining = specs.clone();
    let mut ordered = Vec::new();
    while !remaining.is_empty() {
        let ready = remaining
            .iter()
            .position(|s| s.inputs.values().flatten().all(|t| done.contains(t)))
            .ok_or_else(|| anyhow!("stages {:?} wait on each other (a cycle)", remaining.iter().map(|s| &s.name).collect::<Vec<_>>()))?;
        let stage = remaining.remove(ready);
        done.extend(stage.outputs.values().cloned());
        ordered.push(stage);
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
        [pipeline]
        name = "t"
        [stages.evaluate]
        kind = "evaluate"
        [stages.classify]
        kind = "classify"
        [stages.split]
        kind = "split"
        [stages.embed]
        kind = "embed"
        model = "dlib_resnet29_150"
        [stages.ingest]
        kind = "ingest"
        dataset = "somewhere"
    "#;

    #[test]
    fn orders_stages_by_their_tables() {
        let plan = parse(TEXT, &[]).unwrap();
        let names: Vec<_> = plan.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ingest", "split", "embed", "classify", "evaluate"]);
    }

    #[test]
    fn overrides_reach_stage_settings_and_header() {
        let plan = parse(TEXT, &["ingest.dataset=/data/x".into(), "run_root=s3://b/r".into(), "split.seed=9".into()]).unwrap();
        let ingest = plan.stages.iter().find(|s| s.name == "ingest").unwrap();
        assert_eq!(ingest.config["dataset"].as_str(), Some("/data/x"));
        let split = plan.stages.iter().find(|s| s.name == "split").unwrap();
        assert_eq!(split.config["seed"].as_integer(), Some(9));
        assert_eq!(plan.run_root, "s3://b/r");
    }

    #[test]
    fn unknown_keys_and_missing_tables_are_errors() {
        let err = parse(TEXT, &["ingest.datset=/x".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("datset"), "{err:#}");
        let err = parse("[pipeline]\nname='t'\n[stages.s]\nkind='split'\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("no stage writes"), "{err:#}");
    }

    #[test]
    fn an_input_slot_can_read_several_tables() {
        let text = format!("{TEXT}\n[stages.embed2]\nkind = 'embed'\nmodel = 'dlib_resnet29_150'\noutputs = {{ embeddings = 'more' }}\n");
        let text = text.replace("kind = \"classify\"", "kind = \"classify\"\ninputs = { embeddings = [\"embeddings\", \"more\"] }");
        let plan = parse(&text, &[]).unwrap();
        let classify = plan.stages.iter().position(|s| s.name == "classify").unwrap();
        let embed2 = plan.stages.iter().position(|s| s.name == "embed2").unwrap();
        assert!(embed2 < classify, "classify must wait for both embeddings tables");
        assert_eq!(plan.stages[classify].inputs["embeddings"], ["embeddings", "more"]);
    }

    #[test]
    fn every_bundled_pipeline_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            parse(&text, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
        assert!(n > 0, "no pipelines found in {dir}");
    }
}
