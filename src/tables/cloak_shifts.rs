//! `cloak_shifts`: how far the cloak moved each zoo model's embedding of each cloaked face, the
//! attacker's models and the others alike (the `cloak` stage).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int32Array, RecordBatch};

use super::strings;

pub const CLOAK_SHIFTS: &str = "cloak_shifts";

/// One face under one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    pub image_id: String,
    pub face_index: i32,
    pub model: String,
    pub in_ensemble: bool,
    /// 1 - cosine similarity of the embeddings before and after cloaking.
    pub cosine_distance: f64,
}

pub fn batch(rows: &[Shift]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.face_index))),
        strings(rows.iter().map(|r| &r.model)),
        Arc::new(rows.iter().map(|r| Some(r.in_ensemble)).collect::<BooleanArray>()),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.cosine_distance))),
    ];
    super::batch(CLOAK_SHIFTS, None, columns)
}
