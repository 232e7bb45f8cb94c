//! Face crops as a training set: every picture's largest face cropped the way a model expects,
//! kept as 8-bit pixels in memory ([N, 3, H, W]), with a class label.

use std::collections::HashMap;

use anyhow::{Result, bail};
use tch::{Kind, Tensor};

use crate::face::align::{Alignment, FaceGeometry};
use crate::io::pictures::PictureLoader;
use crate::tables::images::Picture;

/// Pictures decoded at once while cropping (bounds the full-size pixels held in memory).
const DECODE_BATCH: usize = 32;

/// Cropped faces with labels.
pub struct Crops {
    pub ids: Vec<String>,
    /// [N, 3, H, W], uint8.
    pub pixels: Tensor,
    pub labels: Vec<usize>,
}

impl Crops {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Rows `rows` as float pixels 0..255.
    pub fn batch(&self, rows: &[i64]) -> Tensor {
        self.pixels.index_select(0, &Tensor::from_slice(rows)).to_kind(Kind::Float)
    }

    /// Every row, in batches of `size`, as float pixels.
    pub fn batches(&self, size: usize) -> impl Iterator<Item = Tensor> + '_ {
        let n = self.len() as i64;
        (0..n).step_by(size.max(1)).map(move |start| self.pixels.narrow(0, start, (size as i64).min(n - start)).to_kind(Kind::Float))
    }
}

/// The largest face of each labelled picture, cropped with `alignment`. Pictures that cannot be
/// read or have no face are left out and returned with the reason.
pub fn crop_faces(
    loader: &mut PictureLoader,
    pictures: &[(Picture, usize)],
    faces: &HashMap<String, Vec<FaceGeometry>>,
    alignment: Alignment,
) -> Result<(Crops, Vec<String>)> {
    let [h, w] = alignment.output_size();
    let (mut ids, mut crops, mut labels, mut left_out) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for batch in pictures.chunks(DECODE_BATCH) {
        let sources: Vec<Picture> = batch.iter().map(|(p, _)| p.clone()).collect();
        let face_of = |i: usize| faces.get(&batch[i].0.image_id).and_then(|f| f.first());
        let cropped = loader.decode_into(&sources, |i, rgb| face_of(i).map(|face| alignment.crop_picture(&rgb, face)));
        for ((picture, label), crop) in batch.iter().zip(cropped) {
            match crop {
                Ok(Some(crop)) => {
                    crops.push(crop.round().clamp(0.0, 255.0).to_kind(Kind::Uint8));
                    ids.push(picture.image_id.clone());
                    labels.push(*label);
                }
                Err(reason) => left_out.push(reason),
                Ok(None) => left_out.push(format!("{}: no face detected", picture.uri)),
            }
        }
    }
    if crops.is_empty() {
        bail!("no picture with a detected face to learn from ({} left out)", left_out.len());
    }
    let pixels = Tensor::cat(&crops, 0);
    debug_assert_eq!(pixels.size()[2..], [h, w]);
    Ok((Crops { ids, pixels, labels }, left_out))
}
