//! `faces`: every face the `detect` stage found (box, five landmarks, score), largest first, and
//! a row for each picture in which none was found or which could not be read.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray};

use super::{column, float_lists, list_values, opt_strings, strings};
use crate::face::align::FaceGeometry;
use crate::face::mtcnn::Face;

pub const FACES: &str = "faces";

/// What a row says about its picture.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Face number `index` (0 = largest).
    Face { index: i32, face: Face },
    /// The detector found none above its thresholds.
    NoFace,
    /// The picture could not be read again.
    Error(String),
}

/// One row of `faces`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceRow {
    pub image_id: String,
    pub found: Found,
}

impl FaceRow {
    fn status(&self) -> &'static str {
        match self.found {
            Found::Face { .. } => "face",
            Found::NoFace => "no_face",
            Found::Error(_) => "error",
        }
    }

    fn face(&self) -> Option<(i32, &Face)> {
        match &self.found {
            Found::Face { index, face } => Some((*index, face)),
            _ => None,
        }
    }
}

pub fn batch(rows: &[FaceRow]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        Arc::new(rows.iter().map(|r| r.face().map(|f| f.0)).collect::<Int32Array>()),
        strings(rows.iter().map(FaceRow::status)),
        opt_strings(rows.iter().map(|r| match &r.found {
            Found::Error(e) => Some(e.as_str()),
            _ => None,
        })),
        Arc::new(rows.iter().map(|r| r.face().map(|f| f.1.score)).collect::<Float32Array>()),
        float_lists(4, rows.iter().map(|r| r.face().map(|f| f.1.bbox.to_vec())))?,
        float_lists(10, rows.iter().map(|r| r.face().map(|f| f.1.landmarks.iter().flatten().copied().collect())))?,
    ];
    super::batch(FACES, None, columns)
}

/// Every row, grouped by picture (in table order).
pub fn read_rows(batches: &[RecordBatch]) -> Result<HashMap<String, Vec<FaceRow>>> {
    let mut out: HashMap<String, Vec<FaceRow>> = HashMap::new();
    for b in batches {
        let ids = column::<StringArray>(b, "image_id")?;
        let (index, status, error, score) = (
            column::<Int32Array>(b, "face_index")?,
            column::<StringArray>(b, "status")?,
            column::<StringArray>(b, "error")?,
            column::<Float32Array>(b, "score")?,
        );
        let (boxes, marks) = (column::<FixedSizeListArray>(b, "box")?, column::<FixedSizeListArray>(b, "landmarks")?);
        for i in 0..b.num_rows() {
            let found = match status.value(i) {
                "face" => {
                    let (bx, l) = (list_values(boxes, i)?, list_values(marks, i)?);
                    let face =
                        Face { score: score.value(i), bbox: std::array::from_fn(|k| bx[k]), landmarks: std::array::from_fn(|k| [l[2 * k], l[2 * k + 1]]) };
                    Found::Face { index: index.value(i), face }
                }
                "no_face" => Found::NoFace,
                "error" => Found::Error(error.value(i).to_owned()),
                other => bail!("faces: unknown status {other:?}"),
            };
            out.entry(ids.value(i).to_owned()).or_default().push(FaceRow { image_id: ids.value(i).to_owned(), found });
        }
    }
    Ok(out)
}

/// Every face of every picture, in face_index order (largest first); pictures without a face
/// have no entry.
pub fn read(batches: &[RecordBatch]) -> Result<HashMap<String, Vec<FaceGeometry>>> {
    let mut indexed: HashMap<String, Vec<(i32, FaceGeometry)>> = HashMap::new();
    for b in batches {
        let ids = column::<StringArray>(b, "image_id")?;
        let index = column::<Int32Array>(b, "face_index")?;
        let (boxes, marks) = (column::<FixedSizeListArray>(b, "box")?, column::<FixedSizeListArray>(b, "landmarks")?);
        for i in (0..b.num_rows()).filter(|&i| index.is_valid(i)) {
            let (bx, l) = (list_values(boxes, i)?, list_values(marks, i)?);
            if bx.len() != 4 || l.len() != 10 {
                bail!("faces: a box needs 4 values and landmarks 10");
            }
            let geometry =
                FaceGeometry { bbox: std::array::from_fn(|k| bx[k] as f64), landmarks: std::array::from_fn(|k| [l[2 * k] as f64, l[2 * k + 1] as f64]) };
            indexed.entry(ids.value(i).to_owned()).or_default().push((index.value(i), geometry));
        }
    }
    Ok(indexed
        .into_iter()
        .map(|(id, mut faces)| {
            faces.sort_by_key(|f| f.0);
            (id, faces.into_iter().map(|f| f.1).collect())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faces_read_back_largest_first_and_faceless_pictures_have_none() {
        let face = |s: f32| Face { score: 0.9, bbox: [0.0, 0.0, s, s], landmarks: [[s / 2.0, s / 3.0]; 5] };
        let rows = vec![
            FaceRow { image_id: "a".into(), found: Found::Face { index: 1, face: face(10.0) } },
            FaceRow { image_id: "a".into(), found: Found::Face { index: 0, face: face(20.0) } },
            FaceRow { image_id: "b".into(), found: Found::NoFace },
            FaceRow { image_id: "c".into(), found: Found::Error("unreadable".into()) },
        ];
        let faces = read(&[batch(&rows).unwrap()]).unwrap();
        assert_eq!(faces.len(), 1);
        assert_eq!(faces["a"].iter().map(|f| f.bbox[2]).collect::<Vec<_>>(), [20.0, 10.0]);
        assert_eq!(faces["a"][0].landmarks[0], [10.0, (20.0f32 / 3.0) as f64]);
    }
}
