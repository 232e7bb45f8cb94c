//! The `embed` stage: every decodable picture through a face model, in batches.
//!
//! Pictures are fetched concurrently and decoded in parallel (rayon), turned into the model's
//! input, stacked into a batch tensor and run through the model on the chosen device (CUDA
//! when present with `device = "auto"`). Only one batch of pixels is in memory at a time, and
//! embeddings stream to the output table as they come, so datasets larger than memory work.
//!
//! Two ways to make the model input (`input`):
//! - `resize`: the whole picture resized to the model's input size, for datasets already
//!   cropped or aligned for the model (glint24 is ArcFace-aligned).
//! - `aligned`: the picture's largest face from the `faces` table (the `detect` stage), cropped
//!   with the alignment the model card names (see [`crate::face::align`]). Wire it with
//!   `inputs = { images = "images", faces = "faces" }`. A picture without a face falls back to
//!   `resize`; the `crop` column says which was used.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use arrow_array::{Array, FixedSizeListArray, Float32Array, Int32Array, StringArray};
use arrow_schema::{DataType, Field};
use image::RgbImage;
use rayon::prelude::*;
use serde::Deserialize;
use tch::{Device, Tensor};

use crate::face::align::{Alignment, FaceGeometry};
use crate::io::image::{DecodeLimits, decode, resize, to_chw_f32};
use crate::tables::{self as table, column};
use crate::io::{Location, fetch_many};
use crate::models::{self, FaceModel};
use crate::pipeline::stage::{Context, Kind, Stage, build_from};
use crate::progress::info;

pub const KIND: Kind = Kind {
    name: "embed",
    summary: "embed every decodable picture with a face model (batched; CUDA when available)",
    inputs: &["images"],
    optional_inputs: &["faces"],
    outputs: &["embeddings"],
    build: build_from::<Embed>,
};

/// Configuration of the `embed` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embed {
    /// Model id from the zoo (`cloakbench models list`).
    pub model: String,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// How a picture becomes the model input.
    #[serde(default)]
    pub input: InputMode,
    #[serde(default)]
    pub limits: DecodeLimits,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Pictures per checkpoint: each part is saved when done, and an interrupted run resumes
    /// after the last saved part.
    #[serde(default = "default_part_size")]
    pub part_size: usize,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
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
fn default_device() -> String {
    "auto".into()
}
fn default_concurrency() -> usize {
    32
}
fn default_part_size() -> usize {
    1024
}

/// A picture to embed.
#[derive(Debug, Clone)]
pub struct Picture {
    pub image_id: String,
    pub uri: String,
    pub rel_path: String,
}

impl Stage for Embed {
    fn run(&self, ctx: &mut Context) -> Result<()> {
        let device = models::device(&self.device)?;
        let model = models::load(&self.model, device)?;
        let card = model.card().clone();
        let faces = match self.input {
            InputMode::Resize => HashMap::new(),
            InputMode::Aligned if !ctx.has_input("faces") => {
                bail!("input = \"aligned\" needs the faces table: add inputs = {{ images = \"images\", faces = \"faces\" }}")
            }
            InputMode::Aligned => largest_faces(&ctx.read("faces")?)?,
        };
        let alignment = match self.input {
            InputMode::Aligned => Some((Alignment::from_card(&card.alignment, card.input_size)?, card.alignment.clone())),
            InputMode::Resize => None,
        };
        info(ctx.options.quiet, &format!("embed: {} on {device:?}, input {:?}", self.model, self.input));
        let pictures = ok_pictures(&ctx.read("images")?)?;
        let parts = ctx.parts("embeddings", table::schema("embeddings").arrow(Some(card.output_dim as i32)));
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let mut progress = ctx.progress(pictures.len() as u64, "images");
        let (mut failed, mut fallbacks, mut resumed) = (Vec::new(), 0, 0);
        let part_size = self.part_size.max(1);
        let n_parts = pictures.len().div_ceil(part_size);
        for (k, part) in pictures.chunks(part_size).enumerate() {
            if parts.is_done(k)? {
                resumed += 1;
                progress.add(part.len() as u64);
                continue;
            }
            let mut batches = Vec::new();
            for chunk in part.chunks(self.batch_size.max(1)) {
                let mut decoded = Vec::new();
                for (picture, result) in chunk.iter().zip(loader.decode(chunk)?) {
                    match result {
                        Ok(rgb) => decoded.push((picture, rgb)),
                        Err(reason) => failed.push((picture.uri.clone(), reason)),
                    }
                }
                fallbacks += decoded.iter().filter(|(p, _)| alignment.is_some() && !faces.contains_key(&p.image_id)).count();
                let inputs: Vec<ModelInput> = decoded
                    .par_iter()
                    .map(|(p, rgb)| model_input(rgb, faces.get(&p.image_id).zip(alignment.as_ref()), card.input_size, &p.image_id))
                    .collect();
                if !inputs.is_empty() {
                    batches.push(embed_inputs(model.as_ref(), &inputs)?);
                }
                progress.add(chunk.len() as u64);
            }
            parts.write(k, &batches)?;
        }
        progress.finish();
        if resumed > 0 {
            info(ctx.options.quiet, &format!("embed: resumed: {resumed} of {n_parts} parts were done by an interrupted run"));
        }
        let rows = parts.finish(n_parts)?;
        for (uri, reason) in &failed {
            info(ctx.options.quiet, &format!("embed: skipped {uri}: {reason} (it decoded at ingest; did it change?)"));
        }
        let fallback_note = if alignment.is_some() { format!(", {fallbacks} without a detected face resized whole") } else { String::new() };
        ctx.report.push(format!("embed: {rows} embeddings with {}{fallback_note} ({} pictures failed to load)", self.model, failed.len()));
        Ok(())
    }
}

/// One model input, ready to batch: [3, H, W] float pixels 0..255 and how it was cropped.
pub struct ModelInput {
    pub image_id: String,
    pub pixels: Tensor,
    pub crop: String,
}

/// The model input for one picture: its face aligned when there is one, else the picture resized.
fn model_input(rgb: &RgbImage, aligned: Option<(&FaceGeometry, &(Alignment, String))>, size: [i64; 2], image_id: &str) -> ModelInput {
    let (pixels, crop) = match aligned {
        Some((face, (alignment, name))) => {
            let picture = Tensor::from_slice(&to_chw_f32(rgb)).view([1, 3, rgb.height() as i64, rgb.width() as i64]);
            (alignment.crop(&picture, face).squeeze_dim(0), name.clone())
        }
        None => {
            let resized = resize(rgb, size[1] as u32, size[0] as u32);
            (Tensor::from_slice(&to_chw_f32(&resized)).view([3, size[0], size[1]]), "resize".to_owned())
        }
    };
    ModelInput { image_id: image_id.to_owned(), pixels, crop }
}

/// Runs one batch of inputs through the model and returns the embeddings batch.
fn embed_inputs(model: &dyn FaceModel, inputs: &[ModelInput]) -> Result<arrow_array::RecordBatch> {
    let batch = Tensor::stack(&inputs.iter().map(|i| i.pixels.shallow_clone()).collect::<Vec<_>>(), 0);
    let embeddings = tch::no_grad(|| model.embed(&batch.to_device(model.device())));
    embeddings_batch(&model.card().id, inputs, &embeddings)
}

/// The pictures of an images table whose status is ok.
pub fn ok_pictures(images: &[arrow_array::RecordBatch]) -> Result<Vec<Picture>> {
    let mut out = Vec::new();
    for batch in images {
        let (ids, uris, rels, status) = (
            column::<StringArray>(batch, "image_id")?,
            column::<StringArray>(batch, "uri")?,
            column::<StringArray>(batch, "rel_path")?,
            column::<StringArray>(batch, "status")?,
        );
        for i in 0..batch.num_rows() {
            if status.value(i) == "ok" {
                out.push(Picture { image_id: ids.value(i).into(), uri: uris.value(i).into(), rel_path: rels.value(i).into() });
            }
        }
    }
    Ok(out)
}

/// The largest face (face_index 0) of every picture in a faces table.
pub fn largest_faces(faces: &[arrow_array::RecordBatch]) -> Result<HashMap<String, FaceGeometry>> {
    Ok(all_faces(faces)?.into_iter().filter_map(|(id, f)| f.first().map(|f| (id, *f))).collect())
}

/// Every face of every picture in a faces table, in face_index order (largest first).
pub fn all_faces(faces: &[arrow_array::RecordBatch]) -> Result<HashMap<String, Vec<FaceGeometry>>> {
    let mut indexed: HashMap<String, Vec<(i32, FaceGeometry)>> = HashMap::new();
    for batch in faces {
        let ids = column::<StringArray>(batch, "image_id")?;
        let index = column::<Int32Array>(batch, "face_index")?;
        let boxes = column::<FixedSizeListArray>(batch, "box")?;
        let marks = column::<FixedSizeListArray>(batch, "landmarks")?;
        for i in 0..batch.num_rows() {
            if index.is_null(i) {
                continue; // a no_face or error row
            }
            let values = |list: &FixedSizeListArray| -> Result<Vec<f64>> {
                let v = list.value(i);
                let v = v.as_any().downcast_ref::<Float32Array>().context("box and landmarks must be float32")?;
                Ok(v.values().iter().map(|&x| x as f64).collect())
            };
            let (b, l) = (values(boxes)?, values(marks)?);
            let landmarks = std::array::from_fn(|k| [l[2 * k], l[2 * k + 1]]);
            indexed.entry(ids.value(i).to_owned()).or_default().push((index.value(i), FaceGeometry { bbox: [b[0], b[1], b[2], b[3]], landmarks }));
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

/// Fetches and decodes pictures, keeping one open [`Location`] per dataset root.
pub struct PictureLoader {
    limits: DecodeLimits,
    concurrency: usize,
    roots: HashMap<String, Location>,
}

impl PictureLoader {
    pub fn new(limits: DecodeLimits, concurrency: usize) -> PictureLoader {
        PictureLoader { limits, concurrency, roots: HashMap::new() }
    }

    /// Fetches and decodes `pictures` (in parallel), each to RGB or the reason it failed.
    pub fn decode(&mut self, pictures: &[Picture]) -> Result<Vec<Result<RgbImage, String>>> {
        let mut bytes: Vec<Option<Result<bytes::Bytes>>> = (0..pictures.len()).map(|_| None).collect();
        // Group by dataset root so each root's store is opened once and fetched concurrently.
        let mut by_root: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, p) in pictures.iter().enumerate() {
            let root = dataset_root(p)?;
            match by_root.iter_mut().find(|(r, _)| *r == root) {
                Some((_, idx)) => idx.push(i),
                None => by_root.push((root, vec![i])),
            }
        }
        for (root, idx) in by_root {
            if !self.roots.contains_key(&root) {
                self.roots.insert(root.clone(), Location::open(&root)?);
            }
            let keys: Vec<String> = idx.iter().map(|&i| pictures[i].rel_path.clone()).collect();
            for (i, b) in idx.into_iter().zip(fetch_many(&self.roots[&root], &keys, self.concurrency)) {
                bytes[i] = Some(b);
            }
        }
        let limits = &self.limits;
        Ok(bytes
            .into_par_iter()
            .map(|b| {
                let b = b.expect("every picture fetched").map_err(|e| format!("{e:#}"))?;
                decode(&b, limits).map(|d| d.rgb).map_err(|e| e.0)
            })
            .collect())
    }
}

/// The dataset root of a picture: its URI without the dataset-relative path.
fn dataset_root(p: &Picture) -> Result<String> {
    match p.uri.strip_suffix(&p.rel_path) {
        Some(root) => Ok(root.trim_end_matches('/').to_owned()),
        None => bail!("{}: uri does not end with rel_path {}", p.uri, p.rel_path),
    }
}

/// An embeddings batch from a [N, D] tensor, one row per input.
pub fn embeddings_batch(model: &str, inputs: &[ModelInput], embeddings: &Tensor) -> Result<arrow_array::RecordBatch> {
    let dim = embeddings.size()[1] as i32;
    let values: Vec<f32> = Vec::<f32>::try_from(embeddings.to_device(Device::Cpu).to_kind(tch::Kind::Float).flatten(0, -1))
        .context("copying embeddings off the device")?;
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim,
        Arc::new(Float32Array::from(values)),
        None,
    )?;
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from_iter_values(inputs.iter().map(|i| &i.image_id))),
        Arc::new(StringArray::from_iter_values(inputs.iter().map(|_| model))),
        Arc::new(StringArray::from_iter_values(inputs.iter().map(|i| &i.crop))),
        Arc::new(list),
    ];
    table::batch("embeddings", Some(dim), columns)
}

/// Reads an embeddings table into (model -> (image ids, [N, D] tensor)).
pub fn read_embeddings(batches: &[arrow_array::RecordBatch]) -> Result<HashMap<String, (Vec<String>, Tensor)>> {
    let mut parts: HashMap<String, (Vec<String>, Vec<f32>, i64)> = HashMap::new();
    for batch in batches {
        let ids = column::<StringArray>(batch, "image_id")?;
        let models = column::<StringArray>(batch, "model")?;
        let list = column::<FixedSizeListArray>(batch, "embedding")?;
        let dim = list.value_length() as usize;
        let values = list.values().as_any().downcast_ref::<Float32Array>().context("embedding values must be float32")?;
        for i in 0..batch.num_rows() {
            let entry = parts.entry(models.value(i).to_owned()).or_insert_with(|| (vec![], vec![], dim as i64));
            entry.0.push(ids.value(i).to_owned());
            let start = list.value_offset_at(i);
            entry.1.extend_from_slice(&values.values()[start..start + dim]);
        }
    }
    Ok(parts
        .into_iter()
        .map(|(m, (ids, flat, dim))| {
            let n = ids.len() as i64;
            (m, (ids, Tensor::from_slice(&flat).view([n, dim])))
        })
        .collect())
}
