//! Faces: finding them ([`mtcnn`]) and cropping them the way each model expects ([`align`]).
//!
//! The `detect` stage runs MTCNN on every decodable picture and writes the `faces` table: one
//! row per face (largest first), a `no_face` row for a picture in which none was found, and an
//! `error` row for one that could not be read again, so every picture is accounted for. Its
//! work is saved in parts, so an interrupted run resumes where it stopped.


use std::sync::Arc;

use anyhow::Result;
use arrow_array::{Array, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};
use serde::Deserialize;

use crate::stages::embed::{PictureLoader, ok_pictures};
use crate::io::image::DecodeLimits;
use crate::face::mtcnn;
use crate::tables as table;
use crate::pipeline::stage::{Context, Kind, Stage, build_from};
use crate::progress::info;

pub const KIND: Kind = Kind {
    name: "detect",
    summary: "find every face (MTCNN): boxes, five landmarks and scores, largest first",
    inputs: &["images"],
    optional_inputs: &[],
    outputs: &["faces"],
    build: build_from::<Detect>,
};

/// Configuration of the `detect` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// P-, R- and O-Net probability thresholds.
    #[serde(default = "default_thresholds")]
    pub thresholds: [f32; 3],
    /// Smallest face searched for, in pixels.
    #[serde(default = "default_min_face")]
    pub min_face_size: f64,
    /// Ratio between pyramid levels.
    #[serde(default = "default_factor")]
    pub scale_factor: f64,
    /// Shrink pictures whose longer side exceeds this before detecting (coordinates are mapped
    /// back to the original pixels). MTCNN's cost grows with the picture's area while faces in
    /// portrait crops are large; unset, every picture is searched at full size.
    #[serde(default)]
    pub max_side: Option<u32>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub limits: DecodeLimits,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Pictures per checkpoint (see the embed stage).
    #[serde(default = "default_part_size")]
    pub part_size: usize,
}

fn default_thresholds() -> [f32; 3] {
    mtcnn::Settings::default().thresholds
}
fn default_min_face() -> f64 {
    mtcnn::Settings::default().min_face_size
}
fn default_factor() -> f64 {
    mtcnn::Settings::default().scale_factor
}
fn default_device() -> String {
    "auto".into()
}
fn default_concurrency() -> usize {
    32
}
fn default_part_size() -> usize {
    512
}

/// One row of the faces table.
struct Row {
    image_id: String,
    status: &'static str,
    error: Option<String>,
    face: Option<(i32, mtcnn::Face)>,
}

impl Stage for Detect {
    fn run(&self, ctx: &mut Context) -> Result<()> {
        let device = crate::models::device(&self.device)?;
        let detector = mtcnn::Mtcnn::load(device)?;
        let settings = mtcnn::Settings { thresholds: self.thresholds, min_face_size: self.min_face_size, scale_factor: self.scale_factor };
        let pictures = ok_pictures(&ctx.read("images")?)?;
        let parts = ctx.parts("faces", table::schema("faces").arrow(None));
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let mut progress = ctx.progress(pictures.len() as u64, "images");
        let (mut n_faces, mut no_face, mut errors, mut resumed) = (0, 0, 0, 0);
        let part_size = self.part_size.max(1);
        for (k, part) in pictures.chunks(part_size).enumerate() {
            if parts.is_done(k)? {
                resumed += 1;
                progress.add(part.len() as u64);
                continue;
            }
            let mut rows = Vec::new();
            for chunk in part.chunks(32) {
                for (picture, decoded) in chunk.iter().zip(loader.decode(chunk)?) {
                    let id = picture.image_id.clone();
                    match decoded {
                        Err(reason) => {
                            errors += 1;
                            rows.push(Row { image_id: id, status: "error", error: Some(reason), face: None });
                        }
                        Ok(rgb) => {
                            let faces = detect_within(&detector, &rgb, &settings, self.max_side);
                            if faces.is_empty() {
                                no_face += 1;
                                rows.push(Row { image_id: id.clone(), status: "no_face", error: None, face: None });
                            }
                            n_faces += faces.len();
                            rows.extend(faces.into_iter().enumerate().map(|(i, f)| Row { image_id: id.clone(), status: "face", error: None, face: Some((i as i32, f)) }));
                        }
                    }
                }
                progress.add(chunk.len() as u64);
            }
            parts.write(k, &[faces_batch(&rows)?])?;
        }
        progress.finish();
        if resumed > 0 {
            info(ctx.options.quiet, &format!("detect: resumed: {resumed} parts were done by an interrupted run"));
        }
        parts.finish(pictures.len().div_ceil(part_size))?;
        ctx.report.push(format!("detect: {n_faces} faces in {} pictures; {no_face} without a face, {errors} unreadable", pictures.len()));
        Ok(())
    }
}

/// Detects on the picture shrunk to `max_side` (if larger), in original pixel coordinates.
fn detect_within(detector: &mtcnn::Mtcnn, rgb: &image::RgbImage, settings: &mtcnn::Settings, max_side: Option<u32>) -> Vec<mtcnn::Face> {
    let longer = rgb.width().max(rgb.height());
    match max_side {
        Some(limit) if longer > limit => {
            let s = limit as f32 / longer as f32;
            let (w, h) = (((rgb.width() as f32 * s).round() as u32).max(1), ((rgb.height() as f32 * s).round() as u32).max(1));
            let small = crate::io::image::resize(rgb, w, h);
            let (sx, sy) = (rgb.width() as f32 / w as f32, rgb.height() as f32 / h as f32);
            detector
                .detect(&small, settings)
                .into_iter()
                .map(|f| mtcnn::Face {
                    score: f.score,
                    bbox: [f.bbox[0] * sx, f.bbox[1] * sy, f.bbox[2] * sx, f.bbox[3] * sy],
                    landmarks: f.landmarks.map(|[x, y]| [x * sx, y * sy]),
                })
                .collect()
        }
        _ => detector.detect(rgb, settings),
    }
}

fn float_lists(rows: &[Row], len: i32, values: impl Fn(&mtcnn::Face) -> Vec<f32>) -> Result<FixedSizeListArray> {
    let mut flat = Vec::with_capacity(rows.len() * len as usize);
    let mut valid = Vec::with_capacity(rows.len());
    for r in rows {
        match &r.face {
            Some((_, f)) => flat.extend(values(f)),
            None => flat.extend(std::iter::repeat_n(0.0, len as usize)),
        }
        valid.push(r.face.is_some());
    }
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        len,
        Arc::new(Float32Array::from(flat)),
        Some(valid.into()),
    )?)
}

fn faces_batch(rows: &[Row]) -> Result<RecordBatch> {
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.image_id))),
        Arc::new(Int32Array::from(rows.iter().map(|r| r.face.map(|f| f.0)).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.status))),
        Arc::new(StringArray::from(rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>())),
        Arc::new(Float32Array::from(rows.iter().map(|r| r.face.map(|f| f.1.score)).collect::<Vec<_>>())),
        Arc::new(float_lists(rows, 4, |f| f.bbox.to_vec())?),
        Arc::new(float_lists(rows, 10, |f| f.landmarks.iter().flatten().copied().collect())?),
    ];
    table::batch("faces", None, columns)
}
