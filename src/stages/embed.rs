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
//!
//! With `inputs.known_embeddings` (the same model's embeddings of the clean dataset, made the
//! same way), a picture that is still the dataset's own file keeps its known embedding, and only
//! the copies (cloaked, filtered) go through the model.

use std::collections::HashMap;

use anyhow::{Result, bail};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::face::align::{Alignment, FaceGeometry};
use crate::io::image::{DecodeLimits, resize, to_chw_f32};
use crate::io::pictures::PictureLoader;
use crate::learn::finetune::load_tuned;
use crate::models::card::AlignmentName;
use crate::models::{self, DeviceChoice, FaceModel};
use crate::pipeline::{Chunks, Context, Kind, Scope, Slot, StageConfig, check, one_ahead, plan_from};
use crate::tables::embeddings::{self, EMBEDDINGS};
use crate::tables::faces::{self, FACES};
use crate::tables::images::{self, Picture};
use crate::tables::tuned_models::{self, TUNED_MODELS};

pub const KIND: Kind = Kind {
    name: "embed",
    source: file!(),
    summary: "embed every decodable picture with a face model (batched; CUDA when available)",
    inputs: &[Slot::new("images", images::ANY)],
    optional_inputs: &[Slot::new("faces", &[FACES]), Slot::new("weights", &[TUNED_MODELS]), Slot::new("known_embeddings", &[EMBEDDINGS])],
    outputs: &[Slot::new("embeddings", &[EMBEDDINGS])],
    labels: &["model", "alignment"],
    scope: Scope::Picture,
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
    /// With `input = "aligned"`: crop faces another way than the model card says (a trainer
    /// that preprocesses faces its own way: `arcface`, `dlib_chip`, `facenet_crop`,
    /// `loose_box`). Unset: the card's alignment.
    #[serde(default)]
    pub alignment: Option<AlignmentName>,
    #[serde(default)]
    pub limits: DecodeLimits,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Pictures per checkpoint: each chunk is saved when done, and an interrupted run resumes
    /// after the last saved chunk.
    #[serde(default = "default_part_size")]
    pub part_size: usize,
    /// Decode and crop the next batch while the model runs this one. Unset: on a GPU, where
    /// the two use different hardware; on CPU they share the cores, and on 2 cores it gained
    /// nothing (README, "Benchmark").
    #[serde(default)]
    pub decode_ahead: Option<bool>,
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
        if let Some(name) = self.alignment {
            check(self.input == InputMode::Aligned, "alignment", name.as_str(), "set only with input = \"aligned\"")?;
            let card = models::card(&self.model).map_err(|e| format!("{e:#}"))?;
            Alignment::new(name, card.input_size).map_err(|e| format!("alignment = {:?}: {e:#}", name.as_str()))?;
        }
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

    fn fingerprint_material(&self, _log: &dyn Fn(&str)) -> Result<serde_json::Value> {
        models::digest(&self.model)
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let device = self.device.resolve()?;
        let model = match ctx.has_input("weights") {
            false => models::load(&self.model, device)?,
            true => {
                let tuned = tuned_models::weights_of(&ctx.read("weights")?, &self.model)?;
                ctx.log(&format!("{}: fine-tuned weights {}", self.model, tuned.weights_uri));
                load_tuned(&self.model, &tuned.weights_uri, device)?
            }
        };
        let card = model.card().clone();
        let crop_name = self.alignment.unwrap_or(card.alignment);
        let (faces, alignment) = match self.input {
            InputMode::Resize => (HashMap::new(), None),
            InputMode::Aligned if !ctx.has_input("faces") => bail!("input = \"aligned\" needs the faces table"),
            InputMode::Aligned => (largest_faces(&ctx.read("faces")?)?, Some(Alignment::new(crop_name, card.input_size)?)),
        };
        let decode_ahead = self.decode_ahead.unwrap_or(device.is_cuda());
        let ahead = if decode_ahead { ", decoding a batch ahead" } else { "" };
        ctx.log(&format!("{} on {device:?}, input {:?}{ahead}", self.model, self.input));
        let pictures: Vec<Picture> = images::ok_pictures(&ctx.read("images")?)?.into_iter().filter(|p| ctx.owns(&p.image_id)).collect();
        let unchanged = images::unchanged(&images::read(&ctx.read("images")?)?);
        let known = self.known(ctx, card.output_dim)?;
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let outputs = [("embeddings", embeddings::schema(card.output_dim))];
        let crop_name = crop_name.as_str();
        let mut reused = 0;
        ctx.resumable(&pictures, &Chunks::even(pictures.len(), self.part_size), "images", &outputs, |chunk, tally| {
            let mut batches = Vec::new();
            let (kept, to_embed): (Vec<&Picture>, Vec<&Picture>) =
                chunk.iter().partition(|p| unchanged.contains(&p.image_id) && known.contains_key(&p.image_id));
            if !kept.is_empty() {
                let ids: Vec<&str> = kept.iter().map(|p| p.image_id.as_str()).collect();
                let crops: Vec<&str> = kept.iter().map(|p| known[&p.image_id].0.as_str()).collect();
                let rows: Vec<Tensor> = kept.iter().map(|p| known[&p.image_id].1.shallow_clone()).collect();
                batches.push(embeddings::batch(&self.model, &ids, &crops, &Tensor::stack(&rows, 0))?);
                reused += kept.len();
            }
            let to_embed: Vec<Picture> = to_embed.into_iter().cloned().collect();
            // Each picture becomes the model's input on the thread that decoded it.
            let decode = |loader: &mut PictureLoader, batch: &[Picture]| {
                loader.decode_into(batch, |i, rgb| {
                    let face = alignment.as_ref().and_then(|a| faces.get(&batch[i].image_id).map(|f| (a, f)));
                    model_input(&rgb, face, card.input_size)
                })
            };
            let batched = to_embed.chunks(self.batch_size);
            one_ahead(
                &mut loader,
                batched,
                decode_ahead,
                |loader, b| (b, decode(loader, b)),
                |(batch, made)| {
                    let mut inputs: Vec<(&str, Tensor, &str)> = Vec::new();
                    for (p, result) in batch.iter().zip(made) {
                        match result {
                            Ok((pixels, aligned)) => {
                                if alignment.is_some() && !aligned {
                                    tally.skipped.add(format!("{}: no face detected, the whole picture resized instead", p.uri));
                                }
                                inputs.push((p.image_id.as_str(), pixels, if aligned { crop_name } else { "resize" }));
                            }
                            Err(reason) => tally.failed.add(format!("{reason} (it decoded at ingest; did it change?)")),
                        }
                    }
                    if !inputs.is_empty() {
                        batches.push(embed_inputs(model.as_ref(), &inputs)?);
                    }
                    Ok(())
                },
            )?;
            Ok(vec![batches])
        })?;
        let skipped = if alignment.is_some() { format!(", {} without a detected face resized whole", ctx.tally.skipped.n) } else { String::new() };
        let kept = if ctx.has_input("known_embeddings") { format!(", {reused} unchanged ones kept their known embedding") } else { String::new() };
        ctx.report.push(format!("embed: {} pictures with {}{skipped}{kept} ({} failed to load)", pictures.len(), self.model, ctx.tally.failed.n));
        Ok(())
    }
}

impl Embed {
    /// The known embeddings of this model (image id -> crop, [D] features), if wired.
    fn known(&self, ctx: &Context, dim: i64) -> Result<HashMap<String, (String, Tensor)>> {
        if !ctx.has_input("known_embeddings") {
            return Ok(HashMap::new());
        }
        let all = embeddings::read(&ctx.read("known_embeddings")?)?;
        let Some(m) = all.into_iter().find(|m| m.model == self.model) else { bail!("inputs.known_embeddings holds no embeddings of {}", self.model) };
        if m.features.size()[1] != dim {
            bail!("inputs.known_embeddings: {} has dimension {}, the model {dim}", m.model, m.features.size()[1]);
        }
        Ok(m.ids.into_iter().zip(m.crops).enumerate().map(|(i, (id, crop))| (id, (crop, m.features.get(i as i64)))).collect())
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
        Some((alignment, face)) => (alignment.crop_picture(rgb, face).squeeze_dim(0), true),
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
