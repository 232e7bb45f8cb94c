//! `clusters` and `cluster_metrics`: where each picture's embedding was clustered, and how
//! well the clusters recover identities (the `cluster` stage).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};

use super::{column, opt_strings, rows, strings};

pub const CLUSTERS: &str = "clusters";
pub const CLUSTER_METRICS: &str = "cluster_metrics";

/// One picture's cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub image_id: String,
    pub identity: String,
    pub model: String,
    pub algorithm: String,
    pub cluster: i32,
    /// The picture on the first two principal axes of what was clustered (None in old tables).
    pub position: Option<[f32; 2]>,
}

pub fn batch(rows: &[Assignment]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        strings(rows.iter().map(|r| &r.identity)),
        strings(rows.iter().map(|r| &r.model)),
        strings(rows.iter().map(|r| &r.algorithm)),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.cluster))),
        Arc::new(rows.iter().map(|r| r.position.map(|p| p[0])).collect::<Float32Array>()),
        Arc::new(rows.iter().map(|r| r.position.map(|p| p[1])).collect::<Float32Array>()),
    ];
    super::batch(CLUSTERS, None, columns)
}

/// Every assignment; tables written before the projection columns existed read with no position.
pub fn read(batches: &[RecordBatch]) -> Result<Vec<Assignment>> {
    rows(batches)
        .map(|(b, i)| {
            let text = |name| column::<StringArray>(b, name).map(|c| c.value(i).to_owned());
            let coordinate =
                |name| b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Float32Array>()).filter(|c| c.is_valid(i)).map(|c| c.value(i));
            Ok(Assignment {
                image_id: text("image_id")?,
                identity: text("identity")?,
                model: text("model")?,
                algorithm: text("algorithm")?,
                cluster: column::<Int32Array>(b, "cluster")?.value(i),
                position: coordinate("x").zip(coordinate("y")).map(|(x, y)| [x, y]),
            })
        })
        .collect()
}

/// An overall row (identity None: purity and NMI) or an identity's row (recall, precision).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterMetric {
    pub model: String,
    pub algorithm: String,
    pub identity: Option<String>,
    pub protected: Option<bool>,
    pub k: i32,
    pub n: i64,
    pub purity: Option<f64>,
    pub nmi: Option<f64>,
    pub recall: Option<f64>,
    pub precision: Option<f64>,
}

impl ClusterMetric {
    pub fn own_cluster(&self) -> Option<bool> {
        Some(self.recall? >= 0.5 && self.precision? >= 0.5)
    }
}

pub fn metrics_batch(rows: &[ClusterMetric]) -> Result<RecordBatch> {
    let opt = |f: fn(&ClusterMetric) -> Option<f64>| Arc::new(rows.iter().map(f).collect::<Float64Array>()) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.model)),
        strings(rows.iter().map(|r| &r.algorithm)),
        opt_strings(rows.iter().map(|r| r.identity.as_deref())),
        Arc::new(rows.iter().map(|r| r.protected).collect::<BooleanArray>()),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.k))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n))),
        opt(|r| r.purity),
        opt(|r| r.nmi),
        opt(|r| r.recall),
        opt(|r| r.precision),
        Arc::new(rows.iter().map(ClusterMetric::own_cluster).collect::<BooleanArray>()),
    ];
    super::batch(CLUSTER_METRICS, None, columns)
}

pub fn read_metrics(batches: &[RecordBatch]) -> Result<Vec<ClusterMetric>> {
    rows(batches)
        .map(|(b, i)| {
            let opt = |name| column::<Float64Array>(b, name).map(|c| c.is_valid(i).then(|| c.value(i)));
            let (who, protected) = (column::<StringArray>(b, "identity")?, column::<BooleanArray>(b, "protected")?);
            Ok(ClusterMetric {
                model: column::<StringArray>(b, "model")?.value(i).to_owned(),
                algorithm: column::<StringArray>(b, "algorithm")?.value(i).to_owned(),
                identity: who.is_valid(i).then(|| who.value(i).to_owned()),
                protected: protected.is_valid(i).then(|| protected.value(i)),
                k: column::<Int32Array>(b, "k")?.value(i),
                n: column::<Int64Array>(b, "n")?.value(i),
                purity: opt("purity")?,
                nmi: opt("nmi")?,
                recall: opt("recall")?,
                precision: opt("precision")?,
            })
        })
        .collect()
}
