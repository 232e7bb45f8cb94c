//! The `embed` stage: every decodable picture through a face model, in batches.
//!
//! Pictures are fetched concurrently and decoded in parallel (rayon), turned into the model's
//! input, stacked into a batch tensor and run through the model on the chosen device (CUDA
//! when present with `device = "auto"`). Only one batch of pixels is in memory at a time, and
//! each chunk of embeddings is saved as it is done, so an interrupted run resumes.
//!
//! Two ways to make the model input (`input`):
//! - `resize`: the whole picture resized to the model's input size, for datasets already
//!   cropped or aligned for the model (glint24 is ArcFace-aligned).
//! - `aligned`: the picture's largest face from the `faces` table (the `detect` stage), cropped
//!   with the alignment the model card names (see [`crate::face::align`]). Wire it with
//!   `inputs = { images = "images", faces = "faces" }`. A picture without a face falls back to
//!   `resize` (counted as skipped); the `crop` column says which was used.

use std::collections::HashMap;

use anyhow::{Result, bail};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::face::align::{Alignment, FaceGeometry};
use crate::io::image::{DecodeLimits, resize, to_chw_f32};
use crate::io::pictures::PictureLoader;
use crate::models::{self, DeviceChoice, FaceModel};
use crate::pipeline::{Chunks, Context, Kind, Slot, StageConfig, check, plan_from};
use crate::tables::embeddings::{self, EMBEDDINGS};
use crate::tables::faces::{self, FACES};
use crate::tables::images;

pub const KIND: Kind = Kind {
    name: "embed",
    summary: "embed every decodable picture with a face model (batched; CUDA when available)",
    inputs: &[Slot::new("images", images::ANY)],
    optional_inputs: &[Slot::new("faces", &[FACES])],
    outputs: &[Slot::new("embeddings", &[EMBEDDINGS])],
    plan: plan_from::<Embed>,
};

/// Configuration of the `embed` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embed {
    /// Model id from the zoo (`cloakbench models list`).
    pub model: String,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub device: DeviceChoice,
    /// How a picture becomes the model input.
    #[serde(default)]
    pub input: InputMode,
    #[serde(default)]
    pub limits: DecodeLimits,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Pictures per checkpoint: each chunk is saved when done, and an interrupted run resumes
    /// after the last saved chunk.
    #[serde(default = "default_part_size")]
    pub part_size: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// The whole picture, resized to the model's input size.
    #[default]
    Resize,
    /// The largest detected face, aligned as the model card says.
    Aligned,
}

fn default_batch() -> usize {
    32
}
fn default_concurrency() -> usize {
    32
}
fn default_part_size() -> usize {
    1024
}

impl StageConfig for Embed {
    fn validate(&self) -> Result<(), String> {
        models::check_usable(&self.model).map_err(|e| format!("model = {:?}: {e}", self.model))?;
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")?;
        check(self.part_size >= 1, "part_size", self.part_size, "at least 1")?;
        check(self.concurrency >= 1, "concurrency", self.concurrency, "at least 1")?;
        self.limits.check()?;
        self.device.check()
    }

    fn validate_wiring(&self, wired: &[&str]) -> Result<(), String> {
        match (self.input, wired.contains(&"faces")) {
            (InputMode::Aligned, false) => Err("input = \"aligned\" needs the faces table: add inputs = { images = \"images\", faces = \"faces\" }".into()),
            (InputMode::Resize, true) => Err("inputs.faces is read only with input = \"aligned\"".into()),
            _ => Ok(()),
        }
    }

    fn fingerprint_material(&self) -> Result<serde_json::Value> {
        models::digest(&self.model)
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let device = self.device.resolve()?;
        let model = models::load(&self.model, device)?;
        let card = model.card().clone();
        let (faces, alignment) = match self.input {
            InputMode::Resize => (HashMap::new(), None),
            InputMode::Aligned if !ctx.has_input("faces") => bail!("input = \"aligned\" needs the faces table"),
            InputMode::Aligned => (largest_faces(&ctx.read("faces")?)?, Some(Alignment::from_card(&card)?)),
        };
        ctx.log(&format!("{} on {device:?}, input {:?}", self.model, self.input));
        let pictures = images::ok_pictures(&ctx.read("images")?)?;
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let outputs = [("embeddings", embeddings::schema(card.output_dim))];
        let crop_name = card.alignment.as_str();
        ctx.resumable(&pictures, &Chunks::even(pictures.len(), self.part_size), "images", &outputs, |chunk, tally| {
            let mut batches = Vec::new();
            for batch in chunk.chunks(self.batch_size) {
                let mut decoded = Vec::new();
                for (picture, result) in batch.iter().zip(loader.decode(batch)) {
                    match result {
                        Ok(rgb) => decoded.push((picture, rgb)),
                        Err(reason) => tally.failed.add(format!("{reason} (it decoded at ingest; did it change?)")),
                    }
                }
                let inputs: Vec<(&str, Tensor, &str)> = decoded
                    .par_iter()
                    .map(|(p, rgb)| {
                        let face = alignment.as_ref().and_then(|a| faces.get(&p.image_id).map(|f| (a, f)));
                        let (pixels, aligned) = model_input(rgb, face, card.input_size);
                        (p.image_id.as_str(), pixels, if aligned { crop_name } else { "resize" })
                    })
                    .collect();
                if alignment.is_some() {
                    for (p, _) in decoded.iter().filter(|(p, _)| !faces.contains_key(&p.image_id)) {
                        tally.skipped.add(format!("{}: no face detected, the whole picture resized instead", p.uri));
                    }
                }
                if !inputs.is_empty() {
                    batches.push(embed_inputs(model.as_ref(), &inputs)?);
                }
            }
            Ok(vec![batches])
        })?;
        let skipped = if alignment.is_some() { format!(", {} without a detected face resized whole", ctx.tally.skipped.n) } else { String::new() };
        ctx.report.push(format!("embed: {} pictures with {}{skipped} ({} failed to load)", pictures.len(), self.model, ctx.tally.failed.n));
        Ok(())
    }
}

/// The largest face (face_index 0) of every picture that has one.
fn largest_faces(batches: &[arrow_array::RecordBatch]) -> Result<HashMap<String, FaceGeometry>> {
    Ok(faces::read(batches)?.into_iter().filter_map(|(id, f)| f.first().map(|f| (id, *f))).collect())
}

/// One picture as the model's input, [3, H, W] float pixels 0..255: its face aligned when
/// there is one (true), else the picture resized (false).
fn model_input(rgb: &RgbImage, face: Option<(&Alignment, &FaceGeometry)>, size: [i64; 2]) -> (Tensor, bool) {
    match face {
        Some((alignment, face)) => {
            let picture = Tensor::from_slice(&to_chw_f32(rgb)).view([1, 3, rgb.height() as i64, rgb.width() as i64]);
            (alignment.crop(&picture, face).squeeze_dim(0), true)
        }
        None => {
            let resized = resize(rgb, size[1] as u32, size[0] as u32);
            (Tensor::from_slice(&to_chw_f32(&resized)).view([3, size[0], size[1]]), false)
        }
    }
}

/// Runs one batch of inputs (image id, pixels, crop) through the model.
fn embed_inputs(model: &dyn FaceModel, inputs: &[(&str, Tensor, &str)]) -> Result<arrow_array::RecordBatch> {
    let batch = Tensor::stack(&inputs.iter().map(|i| i.1.shallow_clone()).collect::<Vec<_>>(), 0);
    let out = tch::no_grad(|| model.embed(&batch.to_device(model.device())))?;
    let ids: Vec<&str> = inputs.iter().map(|i| i.0).collect();
    let crops: Vec<&str> = inputs.iter().map(|i| i.2).collect();
    embeddings::batch(&model.card().id, &ids, &crops, &out)
}
