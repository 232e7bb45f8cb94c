//! `embeddings`: one face embedding per picture and model (written by the `embed` stage), as a
//! fixed-size list whose length is the model's dimension.

use anyhow::{Context, Result};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use tch::{Device, Tensor};

use super::{column, strings};

pub const EMBEDDINGS: &str = "embeddings";

/// The Arrow schema for embeddings of dimension `dim`.
pub fn schema(dim: i64) -> SchemaRef {
    super::schema(EMBEDDINGS).arrow(Some(dim as i32))
}

/// A batch from a [N, D] tensor: row k is picture `ids[k]`, cropped as `crops[k]` says.
pub fn batch(model: &str, ids: &[&str], crops: &[&str], embeddings: &Tensor) -> Result<RecordBatch> {
    let dim = embeddings.size()[1] as i32;
    let values: Vec<f32> =
        Vec::<f32>::try_from(embeddings.to_device(Device::Cpu).to_kind(tch::Kind::Float).flatten(0, -1)).context("copying embeddings off the device")?;
    let list = super::float_lists(dim, values.chunks(dim as usize).map(|c| Some(c.to_vec())))?;
    let columns: Vec<ArrayRef> = vec![strings(ids), strings(ids.iter().map(|_| model)), strings(crops), list];
    super::batch(EMBEDDINGS, Some(dim), columns)
}

/// One model's embeddings: the pictures, how each was cropped and their [N, D] features, in
/// table order.
pub struct ModelEmbeddings {
    pub model: String,
    pub ids: Vec<String>,
    pub crops: Vec<String>,
    pub features: Tensor,
}

/// Every model's embeddings in `batches`, sorted by model id.
pub fn read(batches: &[RecordBatch]) -> Result<Vec<ModelEmbeddings>> {
    // model -> (ids, crops, values, dimension)
    type Parts = (Vec<String>, Vec<String>, Vec<f32>, i64);
    let mut parts: std::collections::BTreeMap<String, Parts> = Default::default();
    for batch in batches {
        let ids = column::<StringArray>(batch, "image_id")?;
        let crops = column::<StringArray>(batch, "crop")?;
        let models = column::<StringArray>(batch, "model")?;
        let list = column::<FixedSizeListArray>(batch, "embedding")?;
        let dim = list.value_length() as usize;
        let values = list.values().as_any().downcast_ref::<Float32Array>().context("embedding values must be float32")?;
        for i in 0..batch.num_rows() {
            let entry = parts.entry(models.value(i).to_owned()).or_insert_with(|| (vec![], vec![], vec![], dim as i64));
            entry.0.push(ids.value(i).to_owned());
            entry.1.push(crops.value(i).to_owned());
            let start = list.value_offset_at(i);
            entry.2.extend_from_slice(&values.values()[start..start + dim]);
        }
    }
    Ok(parts
        .into_iter()
        .map(|(model, (ids, crops, flat, dim))| {
            let n = ids.len() as i64;
            ModelEmbeddings { model, ids, crops, features: Tensor::from_slice(&flat).view([n, dim]) }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_per_model() {
        let e = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([2, 3]);
        let a = batch("m1", &["x", "y"], &["resize", "arcface"], &e).unwrap();
        let b = batch("m0", &["x"], &["resize"], &e.narrow(0, 1, 1)).unwrap();
        let read = read(&[a, b]).unwrap();
        assert_eq!(read.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(), ["m0", "m1"]);
        assert_eq!(read[1].ids, ["x", "y"]);
        assert!(read[1].features.equal(&e) && read[0].features.equal(&e.narrow(0, 1, 1)));
    }
}
