//! The `verify` stage: how well a model's embeddings tell people apart, independent of any
//! classifier. Every pair of pictures is scored by cosine similarity; the ROC AUC and the equal
//! error rate summarise how same-person pairs separate from different-person pairs.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Kind as DType, Tensor};

use crate::learn::roc::{auc, eer};
use crate::pipeline::{Context, Kind, Scope, Slot, StageConfig, plan_from};
use crate::tables::embeddings::{self, EMBEDDINGS};
use crate::tables::images;
use crate::tables::verification::{self, VERIFICATION, Verification};

pub const KIND: Kind = Kind {
    name: "verify",
    source: file!(),
    summary: "verification ROC AUC and equal error rate of each model's embeddings over all pairs",
    inputs: &[Slot::new("images", images::ANY), Slot::new("embeddings", &[EMBEDDINGS])],
    optional_inputs: &[],
    outputs: &[Slot::new("verification", &[VERIFICATION])],
    labels: &[],
    scope: Scope::Dataset,
    plan: plan_from::<Verify>,
};

/// Configuration of the `verify` stage (no settings yet).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {}

impl StageConfig for Verify {
    fn run(&self, ctx: &mut Context) -> Result<()> {
        let identity = images::identities(&ctx.read("images")?)?;
        let mut rows = Vec::new();
        for m in embeddings::read(&ctx.read("embeddings")?)? {
            let labels: Vec<&str> = m.ids.iter().map(|id| identity.get(id).map_or("", String::as_str)).collect();
            let (same, different) = pair_scores(&m.features, &labels);
            if same.is_empty() || different.is_empty() {
                bail!("{}: need same- and different-identity pairs (got {} and {})", m.model, same.len(), different.len());
            }
            let (auc, eer) = (auc(&same, &different), eer(&same, &different));
            ctx.report.push(format!("verify: {}: AUC {auc:.4}, EER {eer:.4} over {} same / {} different pairs", m.model, same.len(), different.len()));
            rows.push(Verification { model: m.model, n_same: same.len() as i64, n_different: different.len() as i64, auc, eer });
        }
        let batch = verification::batch(&rows)?;
        ctx.write("verification", batch.schema(), &[batch])?;
        Ok(())
    }
}

/// Cosine similarities of all pairs i < j, split into same-label and different-label pairs.
pub fn pair_scores(features: &Tensor, labels: &[&str]) -> (Vec<f64>, Vec<f64>) {
    let unit = crate::models::l2_normalise(&features.to_kind(DType::Double));
    let sims: Vec<f64> = Vec::try_from(unit.matmul(&unit.tr()).flatten(0, -1)).expect("f64 similarities");
    let n = labels.len();
    let (mut same, mut different) = (Vec::new(), Vec::new());
    for i in 0..n {
        for j in i + 1..n {
            if labels[i] == labels[j] { &mut same } else { &mut different }.push(sims[i * n + j]);
        }
    }
    (same, different)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_split_by_label() {
        let f = Tensor::from_slice(&[1f32, 0., 1., 0.1, 0., 1.]).view([3, 2]);
        let (same, diff) = pair_scores(&f, &["a", "a", "b"]);
        assert_eq!((same.len(), diff.len()), (1, 2));
        assert!(same[0] > 0.99 && diff.iter().all(|&d| d < 0.2));
    }
}
