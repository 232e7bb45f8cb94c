//! The `verify` stage: how well a model's embeddings tell people apart, independent of any
//! classifier. Every pair of pictures is scored by cosine similarity; the ROC AUC and the equal
//! error rate summarise how same-person pairs separate from different-person pairs.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Kind as DType, Tensor};

use crate::pipeline::{Context, Kind, Slot, StageConfig, plan_from};
use crate::tables::embeddings::{self, EMBEDDINGS};
use crate::tables::images;
use crate::tables::verification::{self, VERIFICATION, Verification};

pub const KIND: Kind = Kind {
    name: "verify",
    summary: "verification ROC AUC and equal error rate of each model's embeddings over all pairs",
    inputs: &[Slot::new("images", images::ANY), Slot::new("embeddings", &[EMBEDDINGS])],
    optional_inputs: &[],
    outputs: &[Slot::new("verification", &[VERIFICATION])],
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

/// P(a same pair scores above a different pair), ties counting half (Mann-Whitney U / n m).
pub fn auc(same: &[f64], different: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = same.iter().map(|&s| (s, true)).chain(different.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the ranks of the same pairs, with tied scores sharing their mean rank.
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * all[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (n, m) = (same.len() as f64, different.len() as f64);
    (rank_sum - n * (n + 1.0) / 2.0) / (n * m)
}

/// The error rate at the threshold where false accepts and false rejects are closest.
pub fn eer(same: &[f64], different: &[f64]) -> f64 {
    let mut thresholds: Vec<f64> = same.iter().chain(different).copied().collect();
    thresholds.sort_by(f64::total_cmp);
    let (mut s, mut d) = (same.to_vec(), different.to_vec());
    s.sort_by(f64::total_cmp);
    d.sort_by(f64::total_cmp);
    let mut best = (f64::INFINITY, 1.0);
    for t in thresholds {
        let false_reject = s.partition_point(|&x| x < t) as f64 / s.len() as f64;
        let false_accept = (d.len() - d.partition_point(|&x| x < t)) as f64 / d.len() as f64;
        let gap = (false_reject - false_accept).abs();
        if gap < best.0 {
            best = (gap, (false_reject + false_accept) / 2.0);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_eer_of_known_score_sets() {
        assert_eq!(auc(&[0.9, 0.8], &[0.1, 0.2]), 1.0);
        assert_eq!(auc(&[0.1], &[0.9]), 0.0);
        assert_eq!(auc(&[0.5], &[0.5]), 0.5);
        assert!((auc(&[0.9, 0.3], &[0.5, 0.1]) - 0.75).abs() < 1e-12);
        assert_eq!(eer(&[0.9, 0.8], &[0.1, 0.2]), 0.0);
        assert!((eer(&[0.9, 0.3], &[0.5, 0.1]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn pairs_are_split_by_label() {
        let f = Tensor::from_slice(&[1f32, 0., 1., 0.1, 0., 1.]).view([3, 2]);
        let (same, diff) = pair_scores(&f, &["a", "a", "b"]);
        assert_eq!((same.len(), diff.len()), (1, 2));
        assert!(same[0] > 0.99 && diff.iter().all(|&d| d < 0.2));
    }
}
