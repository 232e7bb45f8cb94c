//! What a stage kind is to the core: its name, its table slots, and how its configuration
//! becomes a validated, runnable [`Stage`]. The core knows no particular kind: the registry
//! (`crate::stages::KINDS`) hands them in.

use std::fmt::Debug;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Context;

/// A mistake in a pipeline file or its overrides, found before anything runs (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError(pub String);

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlanError {}

/// A named table slot of a kind, and the table schemas it reads or writes.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub name: &'static str,
    /// Schemas an input slot accepts; an output slot writes the first.
    pub schemas: &'static [&'static str],
}

impl Slot {
    pub const fn new(name: &'static str, schemas: &'static [&'static str]) -> Slot {
        Slot { name, schemas }
    }
}

/// What a stage's work is made of: where it can run in a sharded run (see `super::shards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each picture's rows depend on that picture (and on whole tables the stage reads): the
    /// stage runs in shards, each on the pictures it owns ([`Context::owns`]).
    ///
    /// [`Context::owns`]: super::Context::owns
    Picture,
    /// The stage needs every row at once (a split, a classifier): it runs once, at commit.
    Dataset,
}

/// A stage kind: what `kind = "..."` in a pipeline file selects.
pub struct Kind {
    pub name: &'static str,
    /// The file that defines the kind (`file!()`): the stage's fingerprint includes the digest
    /// of the code it depends on (`run::code_digest_of`), not of the whole crate.
    pub source: &'static str,
    pub summary: &'static str,
    pub inputs: &'static [Slot],
    /// Input slots read only when the pipeline file wires them (`inputs = { slot = "table" }`).
    pub optional_inputs: &'static [Slot],
    pub outputs: &'static [Slot],
    /// Configuration keys that label the stage's tables (and every table made from them), as a
    /// fan-out value does: a cloak's `method` and `mode`, an embedding's `model`.
    pub labels: &'static [&'static str],
    /// Whether the stage can run in shards, each on its own pictures, or needs the whole dataset.
    pub scope: Scope,
    /// Turns the stage's own keys into a validated stage, or says what is wrong with them.
    pub plan: fn(toml::Table) -> Result<Arc<dyn Stage>, String>,
}

impl Kind {
    pub fn input_slot(&self, name: &str) -> Option<&Slot> {
        self.inputs.iter().chain(self.optional_inputs).find(|s| s.name == name)
    }

    pub fn output_slot(&self, name: &str) -> Option<&Slot> {
        self.outputs.iter().find(|s| s.name == name)
    }
}

impl Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A validated, runnable stage.
pub trait Stage: Send + Sync {
    /// The typed configuration with every default filled in: what the stage's fingerprint is
    /// made of, so writing a default out changes nothing and changing a default in code does.
    fn describe(&self) -> serde_json::Value;
    /// What else decides whether earlier outputs are still valid: a dataset's listing, the
    /// digests of the weight files the stage uses. `log` takes a line for the user (how much
    /// had to be read to know).
    fn fingerprint_material(&self, log: &dyn Fn(&str)) -> Result<serde_json::Value>;
    /// Checks the configuration against the input slots the file wires (`wired`).
    fn validate_wiring(&self, wired: &[&str]) -> Result<(), String>;
    /// For a stage that reads from outside the run (a dataset): the keys of the items it
    /// reads, which a sharded run sorts and divides among its shards. `None` for other stages.
    fn source_keys(&self) -> Result<Option<Vec<String>>>;
    /// The id of a source's item with key `key`, as the rows made from it carry it (what
    /// [`Context::owns`] is asked about).
    fn item_id(&self, key: &str) -> String;
    /// Reads the stage's input slots and writes every output slot.
    fn run(&self, ctx: &mut Context) -> Result<()>;
}

/// A stage kind's configuration: deserialised from its pipeline table (unknown keys refused),
/// then validated, before any stage of the pipeline runs.
pub trait StageConfig: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Checks values and references (ranges, model ids, modes) without loading anything.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    fn fingerprint_material(&self, _log: &dyn Fn(&str)) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Checks the configuration against the input slots the file wires (optional slots).
    fn validate_wiring(&self, _wired: &[&str]) -> Result<(), String> {
        Ok(())
    }

    fn source_keys(&self) -> Result<Option<Vec<String>>> {
        Ok(None)
    }

    fn item_id(&self, key: &str) -> String {
        key.to_owned()
    }

    fn run(&self, ctx: &mut Context) -> Result<()>;
}

impl<T: StageConfig> Stage for T {
    fn describe(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a stage configuration serialises")
    }

    fn fingerprint_material(&self, log: &dyn Fn(&str)) -> Result<serde_json::Value> {
        StageConfig::fingerprint_material(self, log)
    }

    fn validate_wiring(&self, wired: &[&str]) -> Result<(), String> {
        StageConfig::validate_wiring(self, wired)
    }

    fn source_keys(&self) -> Result<Option<Vec<String>>> {
        StageConfig::source_keys(self)
    }

    fn item_id(&self, key: &str) -> String {
        StageConfig::item_id(self, key)
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        StageConfig::run(self, ctx)
    }
}

/// The `plan` function of a kind whose configuration is `T`.
pub fn plan_from<T: StageConfig>(table: toml::Table) -> Result<Arc<dyn Stage>, String> {
    let config: T = table.try_into().map_err(|e| one_line(&e))?;
    config.validate()?;
    Ok(Arc::new(config))
}

/// A TOML deserialisation error as one line that names the key: "seed: invalid type: ...".
fn one_line(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.split_last() {
        Some((last, rest)) if last.starts_with("in `") && !rest.is_empty() => {
            format!("{}: {}", last.trim_start_matches("in `").trim_end_matches('`'), rest.join(" "))
        }
        _ => lines.join(" "),
    }
}

/// `Ok` when `ok`, else "key = value: must be allowed".
pub fn check(ok: bool, key: &str, value: impl Debug, allowed: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(format!("{key} = {value:?}: must be {allowed}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Toy {
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        probe: Probe,
    }

    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Probe {
        epochs: i64,
    }

    impl StageConfig for Toy {
        fn validate(&self) -> Result<(), String> {
            check(self.seed < 100, "seed", self.seed, "below 100")
        }
        fn run(&self, _: &mut Context) -> Result<()> {
            Ok(())
        }
    }

    fn plan(text: &str) -> Result<Arc<dyn Stage>, String> {
        plan_from::<Toy>(toml::from_str(text).unwrap())
    }

    #[test]
    fn errors_name_the_key_and_fit_on_one_line() {
        let err = plan("seed = 'abc'").err().unwrap();
        assert!(err.starts_with("seed: invalid type: string \"abc\"") && !err.contains('\n'), "{err}");
        let err = plan("[probe]\nepochs = 'x'").err().unwrap();
        assert!(err.starts_with("probe.epochs: invalid type"), "{err}");
        let err = plan("sed = 1").err().unwrap();
        assert!(err.contains("unknown field `sed`") && err.contains("`seed`"), "{err}");
        assert_eq!(plan("seed = 200").err().unwrap(), "seed = 200: must be below 100");
    }

    #[test]
    fn the_description_fills_in_defaults() {
        assert_eq!(plan("").unwrap().describe(), plan("seed = 0").unwrap().describe());
        assert_ne!(plan("").unwrap().describe(), plan("seed = 1").unwrap().describe());
    }
}
