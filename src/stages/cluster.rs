//! The `cluster` stage: the anti-clustering cloak's claim (Ulixes) tested. The evaluated
//! identities' embeddings (as the trainer scraped the pictures) are clustered into as many
//! clusters as there are identities, by k-means and by average-linkage agglomerative clustering
//! (cosine distance, [`crate::learn::cluster`]); purity and NMI say how well clusters recover
//! identities, and each identity's row whether its pictures still form a cluster of their own.
//! Run it on the clean pictures' embeddings and on each cloak's to compare.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::learn::cluster::{agglomerative, kmeans, nmi, own_cluster, project_2d, purity};
use crate::pipeline::{Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::clusters::{self, Assignment, CLUSTER_METRICS, CLUSTERS, ClusterMetric};
use crate::tables::embeddings::{self, EMBEDDINGS};
use crate::tables::splits::{self, SPLITS};

pub const KIND: Kind = Kind {
    name: "cluster",
    source: file!(),
    summary: "cluster the evaluated identities' embeddings (k-means, agglomerative): purity, NMI, own clusters",
    inputs: &[Slot::new("embeddings", &[EMBEDDINGS]), Slot::new("splits", &[SPLITS])],
    optional_inputs: &[],
    outputs: &[Slot::new("clusters", &[CLUSTERS]), Slot::new("cluster_metrics", &[CLUSTER_METRICS])],
    labels: &[],
    scope: Scope::Dataset,
    plan: plan_from::<Cluster>,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    Kmeans,
    Agglomerative,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Kmeans => "kmeans",
            Algorithm::Agglomerative => "agglomerative",
        }
    }
}

/// Configuration of the `cluster` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    #[serde(default)]
    pub seed: u64,
    /// k-means restarts (the best inertia is kept).
    #[serde(default = "default_restarts")]
    pub restarts: usize,
    /// Lloyd iterations at most per restart.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Kmeans, Algorithm::Agglomerative]
}
fn default_restarts() -> usize {
    5
}
fn default_iterations() -> usize {
    100
}

impl StageConfig for Cluster {
    fn validate(&self) -> Result<(), String> {
        check(!self.algorithms.is_empty(), "algorithms", &self.algorithms, "at least one of kmeans, agglomerative")?;
        check(self.restarts >= 1 && self.iterations >= 1, "restarts", self.restarts, "at least 1 (and iterations at least 1)")
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let splits = splits::read(&ctx.read("splits")?)?;
        let identities = splits.evaluated();
        let index: HashMap<&str, usize> = identities.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        let (mut assignments, mut metrics) = (Vec::new(), Vec::new());
        for m in embeddings::read(&ctx.read("embeddings")?)? {
            let rows: Vec<(usize, &str, usize)> = m
                .ids
                .iter()
                .enumerate()
                .filter_map(|(row, id)| splits.by_image.get(id).and_then(|(who, _)| index.get(who.as_str()).map(|&l| (row, id.as_str(), l))))
                .collect();
            if rows.len() < 2 {
                bail!("{}: fewer than two evaluated pictures to cluster", m.model);
            }
            let x = m.features.index_select(0, &Tensor::from_slice(&rows.iter().map(|r| r.0 as i64).collect::<Vec<_>>()));
            let labels: Vec<usize> = rows.iter().map(|r| r.2).collect();
            let positions = project_2d(&x);
            let k = identities.len();
            for &algorithm in &self.algorithms {
                let found = match algorithm {
                    Algorithm::Kmeans => kmeans(&x, k, self.seed, self.restarts, self.iterations),
                    Algorithm::Agglomerative => agglomerative(&x, k),
                };
                let (p, n) = (purity(&found, &labels), nmi(&found, &labels));
                let base = ClusterMetric {
                    model: m.model.clone(),
                    algorithm: algorithm.name().into(),
                    identity: None,
                    protected: None,
                    k: k as i32,
                    n: rows.len() as i64,
                    purity: Some(p),
                    nmi: Some(n),
                    recall: None,
                    precision: None,
                };
                for (who, l) in identities.iter().zip(0..) {
                    let (_, recall, precision) = own_cluster(&found, &labels, l);
                    let count = labels.iter().filter(|&&x| x == l).count() as i64;
                    metrics.push(ClusterMetric {
                        identity: Some(who.clone()),
                        protected: Some(splits.protected.contains(who)),
                        n: count,
                        purity: None,
                        nmi: None,
                        recall: Some(recall),
                        precision: Some(precision),
                        ..base.clone()
                    });
                }
                let protected_own: Vec<String> = metrics
                    .iter()
                    .filter(|c| c.model == m.model && c.algorithm == algorithm.name() && c.protected == Some(true))
                    .map(|c| format!("{} {}", c.identity.as_deref().unwrap_or(""), if c.own_cluster() == Some(true) { "still clusters" } else { "scattered" }))
                    .collect();
                ctx.report.push(format!("{}: {} {}: purity {p:.3}, NMI {n:.3}; {}", ctx.stage, m.model, algorithm.name(), protected_own.join(", ")));
                metrics.push(base);
                assignments.extend(rows.iter().zip(&found).zip(&positions).map(|(((_, id, l), &c), &p)| Assignment {
                    image_id: id.to_string(),
                    identity: identities[*l].clone(),
                    model: m.model.clone(),
                    algorithm: algorithm.name().into(),
                    cluster: c as i32,
                    position: Some(p),
                }));
            }
        }
        let (a, b) = (clusters::batch(&assignments)?, clusters::metrics_batch(&metrics)?);
        ctx.write("clusters", a.schema(), &[a])?;
        ctx.write("cluster_metrics", b.schema(), &[b])?;
        Ok(())
    }
}
