//! The `results` stage: a grid's figures in one table. It gathers every `metrics` table of the
//! run (`inputs = { metrics = ["metrics[*]", "metrics_adaptive[*]"] }`) and reads each table's
//! cell from its labels, the fan-out values and tags of the stages that made it: `method`,
//! `mode` (the cloak), `fraction` (the mix), `defender` (a chain's tag; `standard` becomes
//! `baseline` for the attacker's own models and `oblivious` for the others), `alignment`,
//! `purifier`, `protocol`, `dataset`. Each protected user's row carries the other users'
//! accuracy in the same cell and, where the run has the cell with nothing cloaked, the user's
//! own error rate there (the control).

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::pipeline::{Context, Kind, Labels, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::metrics::{self, METRICS, Metric};
use crate::tables::results::{self, RESULTS, ResultRow};

pub const KIND: Kind = Kind {
    name: "results",
    source: file!(),
    summary: "gather every cell's metrics into one results table: protection per user, cloak and trainer",
    inputs: &[Slot::new("metrics", &[METRICS])],
    optional_inputs: &[],
    outputs: &[Slot::new("results", &[RESULTS])],
    labels: &[],
    scope: Scope::Dataset,
    plan: plan_from::<Results>,
};

/// Configuration of the `results` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// The attacker's models: a `standard` trainer using one of them is the baseline.
    #[serde(default = "default_attackers")]
    pub attacker_models: Vec<String>,
}

fn default_attackers() -> Vec<String> {
    vec!["dlib_resnet29_150".into()]
}

impl StageConfig for Results {
    fn validate(&self) -> Result<(), String> {
        check(!self.attacker_models.is_empty(), "attacker_models", &self.attacker_models, "the attacker's model ids")
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let mut rows = Vec::new();
        for (labels, batches) in ctx.read_labelled("metrics")? {
            rows.extend(self.rows_of(&labels, &metrics::read(&batches)?)?);
        }
        attach_controls(&mut rows);
        ctx.report.push(summary(&rows));
        let batch = results::batch(&rows)?;
        ctx.write("results", batch.schema(), &[batch])?;
        Ok(())
    }
}

fn label<'a>(labels: &'a Labels, key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl Results {
    /// The rows of one cell's metrics table: one per protected user, classifier, model and k.
    fn rows_of(&self, labels: &Labels, metrics: &[Metric]) -> Result<Vec<ResultRow>> {
        let method = label(labels, "method").unwrap_or("none").to_owned();
        let fraction = match label(labels, "fraction") {
            Some(f) => f.parse::<f64>().map_err(|_| anyhow::anyhow!("fraction label {f:?} is not a number"))?,
            None if method == "none" => 0.0,
            None => 1.0,
        };
        let all_labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut out = Vec::new();
        for m in metrics.iter().filter(|m| m.protected == Some(true)) {
            let others: Vec<&Metric> = metrics
                .iter()
                .filter(|o| o.identity.is_some() && o.protected == Some(false) && o.classifier == m.classifier && o.model == m.model && o.top_k == m.top_k)
                .collect();
            let n: i64 = others.iter().map(|o| o.n_test).sum();
            if n == 0 {
                bail!("cell {labels:?}: no unprotected user to measure the clean accuracy on");
            }
            let clean_accuracy = others.iter().map(|o| o.accuracy * o.n_test as f64).sum::<f64>() / n as f64;
            let defender = match label(labels, "defender").unwrap_or("standard") {
                "standard" if self.attacker_models.contains(&m.model) => "baseline",
                "standard" => "oblivious",
                other => other,
            };
            out.push(ResultRow {
                dataset: label(labels, "dataset").map(str::to_owned),
                protocol: label(labels, "protocol").unwrap_or("facecure").to_owned(),
                method: method.clone(),
                mode: label(labels, "mode").unwrap_or("none").to_owned(),
                cloak_fraction: fraction,
                defender: defender.to_owned(),
                defender_model: m.model.clone(),
                trainer_alignment: label(labels, "alignment").map(str::to_owned),
                purifier: label(labels, "purifier").map(str::to_owned),
                classifier: m.classifier.clone(),
                top_k: m.top_k,
                user: m.identity.clone().unwrap_or_default(),
                protection_rate: 1.0 - m.accuracy,
                unprotected_error: None,
                clean_accuracy,
                n_test: m.n_test,
                labels: all_labels.join(","),
            });
        }
        Ok(out)
    }
}

/// Sets each row's `unprotected_error` from the row of the same cell at fraction 0.
fn attach_controls(rows: &mut [ResultRow]) {
    type Key = (Option<String>, String, String, String, String, String, Option<String>, Option<String>, String, i32, String);
    let key = |r: &ResultRow| -> Key {
        (
            r.dataset.clone(),
            r.protocol.clone(),
            r.method.clone(),
            r.mode.clone(),
            r.defender.clone(),
            r.defender_model.clone(),
            r.trainer_alignment.clone(),
            r.purifier.clone(),
            r.classifier.clone(),
            r.top_k,
            r.user.clone(),
        )
    };
    let controls: HashMap<Key, f64> = rows.iter().filter(|r| r.cloak_fraction == 0.0).map(|r| (key(r), r.protection_rate)).collect();
    for r in rows.iter_mut() {
        r.unprotected_error = controls.get(&key(r)).copied();
    }
}

/// Mean protection per cloak and defender at the largest fraction each has, one line each.
fn summary(rows: &[ResultRow]) -> String {
    let mut cells: std::collections::BTreeMap<(String, String, String, String), Vec<f64>> = Default::default();
    let full: HashMap<(String, String), f64> = rows.iter().fold(HashMap::new(), |mut m, r| {
        let e = m.entry((r.method.clone(), r.mode.clone())).or_insert(0.0f64);
        *e = e.max(r.cloak_fraction);
        m
    });
    for r in rows.iter().filter(|r| r.top_k == 1 && full.get(&(r.method.clone(), r.mode.clone())) == Some(&r.cloak_fraction)) {
        cells
            .entry((format!("{} {}", r.method, r.mode), r.defender.clone(), r.defender_model.clone(), r.classifier.clone()))
            .or_default()
            .push(r.protection_rate);
    }
    let mut out = format!("\nresults: mean protection at each cloak's full fraction ({} rows in all)\n", rows.len());
    out += "  protection = the share of a protected user's clean test photos the trainer fails to recognise (1 = fully protected, 0 = recognised)\n";
    out += &format!("  {:<22} {:<15} {:<34} {:<18} {:>10}\n", "cloak", "defender", "model", "classifier", "protection");
    for ((cloak, defender, model, classifier), v) in cells {
        out += &format!("  {cloak:<22} {defender:<15} {model:<34} {classifier:<18} {:>10.3}\n", v.iter().sum::<f64>() / v.len() as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(identity: &str, protected: bool, accuracy: f64) -> Metric {
        Metric {
            classifier: "nearest_neighbour".into(),
            model: "m".into(),
            identity: Some(identity.into()),
            protected: Some(protected),
            top_k: 1,
            n_test: 10,
            accuracy,
        }
    }

    #[test]
    fn a_cell_becomes_rows_with_clean_accuracy_and_its_control() {
        let results = Results { attacker_models: vec!["m".into()] };
        let metrics = vec![metric("ann", true, 0.2), metric("bob", false, 0.9), metric("cy", false, 0.7)];
        let cell = |f: &str| vec![("method".to_owned(), "fawkes".to_owned()), ("mode".into(), "high".into()), ("fraction".into(), f.into())];
        let mut rows = results.rows_of(&cell("1"), &metrics).unwrap();
        let mut control = results.rows_of(&cell("0"), &[metric("ann", true, 0.9), metric("bob", false, 0.9), metric("cy", false, 0.7)]).unwrap();
        rows.append(&mut control);
        attach_controls(&mut rows);
        let r = &rows[0];
        assert_eq!((r.user.as_str(), r.defender.as_str(), r.cloak_fraction), ("ann", "baseline", 1.0));
        assert!((r.protection_rate - 0.8).abs() < 1e-12 && (r.clean_accuracy - 0.8).abs() < 1e-12);
        assert!((r.unprotected_error.unwrap() - 0.1).abs() < 1e-12);
    }
}
