//! The `embed` stage: every decodable picture through a face model, in batches.
//!
//! Pictures are fetched concurrently, decoded and resized in parallel (rayon), stacked into a
//! batch tensor and run through the model on the chosen device (CUDA when present with
//! `device = "auto"`). Only one batch of pixels is in memory at a time, and embeddings stream
//! to the output table as they come, so datasets larger than memory work.
//!
//! Input mode `resize` feeds the whole picture resized to the model's input size: right for
//! datasets already cropped or aligned for the model (glint24 is ArcFace-aligned; the FaceScrub
//! fixtures are cropped to their face boxes).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
use arrow_schema::{DataType, Field};
use rayon::prelude::*;
use serde::Deserialize;
use tch::Tensor;

use crate::io::image::{DecodeLimits, decode, resize, to_chw_f32};
use crate::io::table::{self, column};
use crate::io::{Location, fetch_many, split_url};
use crate::models;
use crate::pipeline::stage::{Context, Kind, Stage, build_from};
use crate::progress::info;

pub const KIND: Kind = Kind {
    name: "embed",
    summary: "embed every decodable picture with a face model (batched; CUDA when available)",
    inputs: &["images"],
    optional_inputs: &[],
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
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// The whole picture, resized to the model's input size.
    #[default]
    Resize,
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

/// A picture to embed.
#[derive(Debug, Clone)]
pub struct Picture {
    pub image_id: String,
    pub uri: String,
    pub rel_path: String,
}

impl Stage for Embed {
    fn run(&self, ctx: &mut Context) -> Result<()> {
        models::card(&self.model)?;
        let device = models::device(&self.device)?;
        let model = models::load(&self.model, device)?;
        info(ctx.options.quiet, &format!("embed: {} on {device:?}", self.model));
        let pictures = ok_pictures(&ctx.read("images")?)?;
        let dim = model.card().output_dim as i32;
        let mut writer = ctx.writer("embeddings", table::schema("embeddings").arrow(Some(dim)))?;
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let mut progress = ctx.progress(pictures.len() as u64, "images");
        let mut failed = Vec::new();
        for chunk in pictures.chunks(self.batch_size.max(1)) {
            let (batch, ids) = match loader.load(chunk, model.card().input_size) {
                Ok(loaded) => loaded.into_batch(&mut failed),
                Err(e) => return Err(e),
            };
            if !ids.is_empty() {
                let embeddings = tch::no_grad(|| model.embed(&batch.to_device(device)));
                writer.write(&embeddings_batch(&self.model, &ids, &embeddings)?)?;
            }
            progress.add(chunk.len() as u64);
        }
        progress.finish();
        let rows = writer.finish()?;
        for (uri, reason) in &failed {
            info(ctx.options.quiet, &format!("embed: skipped {uri}: {reason} (it decoded at ingest; did it change?)"));
        }
        ctx.report.push(format!("embed: {rows} embeddings with {} ({} pictures failed to load)", self.model, failed.len()));
        Ok(())
    }
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

/// Fetches and decodes pictures, keeping one open [`Location`] per dataset root.
pub struct PictureLoader {
    limits: DecodeLimits,
    concurrency: usize,
    roots: HashMap<String, Location>,
}

/// A loaded batch: pixels of the pictures that decoded, and the reasons of those that did not.
pub struct Loaded {
    pub ids: Vec<String>,
    pub pixels: Vec<Vec<f32>>,
    pub size: [i64; 2],
    pub failures: Vec<(String, String)>,
}

impl Loaded {
    /// Stacks the pixels into an [N, 3, H, W] tensor; failures are appended to `failed`.
    pub fn into_batch(self, failed: &mut Vec<(String, String)>) -> (Tensor, Vec<String>) {
        failed.extend(self.failures);
        let [h, w] = self.size;
        let flat: Vec<f32> = self.pixels.concat();
        let n = self.ids.len() as i64;
        (Tensor::from_slice(&flat).view([n, 3, h, w]), self.ids)
    }
}

impl PictureLoader {
    pub fn new(limits: DecodeLimits, concurrency: usize) -> PictureLoader {
        PictureLoader { limits, concurrency, roots: HashMap::new() }
    }

    /// Loads `pictures` resized to `size` ([height, width]).
    pub fn load(&mut self, pictures: &[Picture], size: [i64; 2]) -> Result<Loaded> {
        let mut bytes = Vec::with_capacity(pictures.len());
        // Group by dataset root so each root's store is opened once and fetched concurrently.
        let mut by_root: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, p) in pictures.iter().enumerate() {
            let root = dataset_root(p)?;
            match by_root.iter_mut().find(|(r, _)| *r == root) {
                Some((_, idx)) => idx.push(i),
                None => by_root.push((root, vec![i])),
            }
            bytes.push(None);
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
        let (h, w) = (size[0] as u32, size[1] as u32);
        let limits = &self.limits;
        let decoded: Vec<Result<Vec<f32>, String>> = bytes
            .into_par_iter()
            .map(|b| {
                let b = b.expect("every picture fetched").map_err(|e| format!("{:#}", e))?;
                let d = decode(&b, limits).map_err(|e| e.0)?;
                Ok(to_chw_f32(&resize(&d.rgb, w, h)))
            })
            .collect();
        let mut loaded = Loaded { ids: vec![], pixels: vec![], size, failures: vec![] };
        for (p, d) in pictures.iter().zip(decoded) {
            match d {
                Ok(px) => {
                    loaded.ids.push(p.image_id.clone());
                    loaded.pixels.push(px);
                }
                Err(reason) => loaded.failures.push((p.uri.clone(), reason)),
            }
        }
        Ok(loaded)
    }
}

/// The dataset root of a picture: its URI without the dataset-relative path.
fn dataset_root(p: &Picture) -> Result<String> {
    match p.uri.strip_suffix(&p.rel_path) {
        Some(root) => Ok(root.trim_end_matches('/').to_owned()),
        None => {
            let (dir, _) = split_url(&p.uri);
            bail!("{}: uri does not end with rel_path {} (dir {dir})", p.uri, p.rel_path)
        }
    }
}

/// An embeddings batch from a [N, D] tensor.
pub fn embeddings_batch(model: &str, ids: &[String], embeddings: &Tensor) -> Result<arrow_array::RecordBatch> {
    let dim = embeddings.size()[1] as i32;
    let values: Vec<f32> = Vec::<f32>::try_from(embeddings.to_device(tch::Device::Cpu).to_kind(tch::Kind::Float).flatten(0, -1))
        .context("copying embeddings off the device")?;
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim,
        Arc::new(Float32Array::from(values)),
        None,
    )?;
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from_iter_values(ids)),
        Arc::new(StringArray::from_iter_values(ids.iter().map(|_| model))),
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
