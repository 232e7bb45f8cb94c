//! The `evaluate` stage: accuracy per classifier, model and identity, and protection rates;
//! the [`verify`] stage: verification AUC of each model.
//!
//! Protection rate, as in FaceCure: for a protected user, 1 - accuracy on their clean test
//! pictures. The `metrics` table has one row per (classifier, model, identity) and one overall
//! row per (classifier, model) with a null identity; the same figures are printed as a table.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::pipeline::{Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::metrics::{self, METRICS, Metric};
use crate::tables::predictions::{self, PREDICTIONS};
use crate::tables::splits::{self, SPLITS};

pub const KIND: Kind = Kind {
    name: "evaluate",
    source: file!(),
    summary: "accuracy per identity and overall; protection rate for protected users",
    inputs: &[Slot::new("predictions", &[PREDICTIONS]), Slot::new("splits", &[SPLITS])],
    optional_inputs: &[],
    outputs: &[Slot::new("metrics", &[METRICS])],
    labels: &[],
    scope: Scope::Dataset,
    plan: plan_from::<Evaluate>,
};

/// Configuration of the `evaluate` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    /// Rank-k accuracies to report: 1 is FaceCure's accuracy; LowKey reports [1, 50].
    #[serde(default = "default_ranks")]
    pub ranks: Vec<usize>,
    /// Print the per-identity table after the run (a grid of many cells turns it off and
    /// reads its `results` instead).
    #[serde(default = "default_report")]
    pub report: bool,
}

fn default_report() -> bool {
    true
}

fn default_ranks() -> Vec<usize> {
    vec![1]
}

impl StageConfig for Evaluate {
    fn validate(&self) -> Result<(), String> {
        check(!self.ranks.is_empty() && self.ranks.iter().all(|&k| k >= 1), "ranks", &self.ranks, "a list of ranks of at least 1, as [1, 50]")
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let protected = splits::read(&ctx.read("splits")?)?.protected;
        let predictions = predictions::read(&ctx.read("predictions")?)?;
        let mut metrics = Vec::new();
        for &k in &self.ranks {
            // Rank 1 is the prediction being right.
            let outcomes: Vec<(String, String, String, bool)> = predictions
                .iter()
                .map(|p| (p.classifier.clone(), p.model.clone(), p.identity.clone(), if k == 1 { p.correct() } else { p.rank as usize <= k }))
                .collect();
            metrics.extend(compute(&outcomes, &protected, k as i32));
        }
        if self.report {
            ctx.report.push(render(&metrics));
        }
        let batch = metrics::batch(&metrics)?;
        ctx.write("metrics", batch.schema(), &[batch])?;
        Ok(())
    }
}

/// Metrics from (classifier, model, identity, correct) outcomes.
pub fn compute(outcomes: &[(String, String, String, bool)], protected: &BTreeSet<String>, top_k: i32) -> Vec<Metric> {
    // (classifier, model) -> identity -> (n, correct)
    let mut counts: BTreeMap<(String, String), BTreeMap<String, (i64, i64)>> = BTreeMap::new();
    for (c, m, who, ok) in outcomes {
        let e = counts.entry((c.clone(), m.clone())).or_default().entry(who.clone()).or_default();
        e.0 += 1;
        e.1 += *ok as i64;
    }
    let mut out = Vec::new();
    for ((classifier, model), per_identity) in counts {
        let (n, k) = per_identity.values().fold((0, 0), |(n, k), (a, b)| (n + a, k + b));
        out.push(Metric {
            classifier: classifier.clone(),
            model: model.clone(),
            identity: None,
            protected: None,
            top_k,
            n_test: n,
            accuracy: k as f64 / n as f64,
        });
        for (who, (n, k)) in per_identity {
            out.push(Metric {
                classifier: classifier.clone(),
                model: model.clone(),
                protected: Some(protected.contains(&who)),
                identity: Some(who),
                top_k,
                n_test: n,
                accuracy: k as f64 / n as f64,
            });
        }
    }
    out
}

/// A readable table: per (classifier, model), each identity's accuracy, then the overall line.
pub fn render(metrics: &[Metric]) -> String {
    let mut out = String::new();
    for overall in metrics.iter().filter(|m| m.identity.is_none()) {
        let rank = if overall.top_k == 1 { String::new() } else { format!(", rank-{} accuracy", overall.top_k) };
        out += &format!("\n{} on {} embeddings{rank}\n", overall.classifier, overall.model);
        out += &format!("  {:<28} {:>6} {:>9} {:>11}\n", "identity", "n_test", "accuracy", "protection");
        let same = |m: &&Metric| m.classifier == overall.classifier && m.model == overall.model && m.top_k == overall.top_k;
        for m in metrics.iter().filter(|m| m.identity.is_some()).filter(same) {
            let protection = m.protection_rate().map_or("-".to_owned(), |p| format!("{p:.3}"));
            let name = format!("{}{}", m.identity.as_deref().unwrap_or(""), if m.protected == Some(true) { " (protected)" } else { "" });
            out += &format!("  {name:<28} {:>6} {:>9.3} {protection:>11}\n", m.n_test, m.accuracy);
        }
        out += &format!("  {:<28} {:>6} {:>9.3}\n", "overall", overall.n_test, overall.accuracy);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_protection_rate() {
        let o = |who: &str, ok| ("nn".to_owned(), "m".to_owned(), who.to_owned(), ok);
        let outcomes = vec![o("a", true), o("a", false), o("b", true), o("b", true)];
        let protected = BTreeSet::from(["a".to_owned()]);
        let m = compute(&outcomes, &protected, 1);
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].identity.as_deref(), m[0].n_test, m[0].accuracy), (None, 4, 0.75));
        assert_eq!((m[1].accuracy, m[1].protection_rate()), (0.5, Some(0.5)));
        assert_eq!(m[2].protection_rate(), None);
        assert!(render(&m).contains("a (protected)"));
    }
}
