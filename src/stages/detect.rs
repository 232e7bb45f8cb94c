//! The `detect` stage: MTCNN on every decodable picture, writing the `faces` table: one row per
//! face (largest first), a `no_face` row for a picture in which none was found (counted as
//! skipped), and an `error` row for one that could not be read again (counted as failed), so
//! every picture is accounted for. Its work is saved in chunks, so an interrupted run resumes
//! where it stopped.
//!
//! A trainer that scraped mostly unchanged pictures (all but the cloaked ones) need not search
//! them again: with `inputs.known_faces` (the faces of the clean dataset, found with the same
//! settings), a picture that is still the dataset's own file keeps its rows from there, and only
//! the copies (cloaked, filtered) are searched.

use std::collections::HashMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::face::mtcnn::{self, Detectors, Mtcnn};
use crate::io::image::DecodeLimits;
use crate::io::pictures::PictureLoader;
use crate::models::DeviceChoice;
use crate::pipeline::{Chunks, Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::faces::{self, FACES, FaceRow, Found};
use crate::tables::images::{self, Picture};

pub const KIND: Kind = Kind {
    name: "detect",
    source: file!(),
    summary: "find every face (MTCNN): boxes, five landmarks and scores, largest first",
    inputs: &[Slot::new("images", images::ANY)],
    optional_inputs: &[Slot::new("known_faces", &[FACES])],
    outputs: &[Slot::new("faces", &[FACES])],
    labels: &[],
    scope: Scope::Picture,
    plan: plan_from::<Detect>,
};

/// Configuration of the `detect` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// P-, R- and O-Net probability thresholds.
    #[serde(default = "default_thresholds")]
    pub thresholds: [f32; 3],
    /// Smallest face searched for, in pixels.
    #[serde(default = "default_min_face")]
    pub min_face_size: f64,
    /// Ratio between pyramid levels, in (0, 1).
    #[serde(default = "default_factor")]
    pub scale_factor: f64,
    /// Shrink pictures whose longer side exceeds this before detecting (coordinates are mapped
    /// back to the original pixels). MTCNN's cost grows with the picture's area while faces in
    /// portrait crops are large; unset, every picture is searched at full size.
    #[serde(default)]
    pub max_side: Option<u32>,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub limits: DecodeLimits,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Pictures per checkpoint: each chunk is saved when done.
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
fn default_concurrency() -> usize {
    32
}
fn default_part_size() -> usize {
    512
}

/// Pictures decoded at once inside a chunk (bounds the pixels held in memory), then searched
/// side by side by the detectors.
const DECODE_BATCH: usize = 32;

impl Detect {
    fn settings(&self) -> mtcnn::Settings {
        mtcnn::Settings { thresholds: self.thresholds, min_face_size: self.min_face_size, scale_factor: self.scale_factor }
    }
}

impl StageConfig for Detect {
    fn validate(&self) -> Result<(), String> {
        self.settings().check()?;
        check(self.max_side.is_none_or(|m| m >= 12), "max_side", self.max_side, "at least 12 (MTCNN's smallest window)")?;
        check(self.part_size >= 1, "part_size", self.part_size, "at least 1")?;
        check(self.concurrency >= 1, "concurrency", self.concurrency, "at least 1")?;
        self.limits.check()?;
        self.device.check()
    }

    fn fingerprint_material(&self, _log: &dyn Fn(&str)) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "mtcnn": crate::models::file_digest(&Mtcnn::weights_path())? }))
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let mut detectors = Detectors::load(self.device.resolve()?)?;
        let settings = self.settings();
        let image_rows = images::read(&ctx.read("images")?)?;
        let pictures: Vec<Picture> = images::ok_pictures(&ctx.read("images")?)?.into_iter().filter(|p| ctx.owns(&p.image_id)).collect();
        let known = match ctx.has_input("known_faces") {
            true => faces::read_rows(&ctx.read("known_faces")?)?,
            false => HashMap::new(),
        };
        let unchanged = images::unchanged(&image_rows);
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let outputs = [("faces", faces::batch(&[])?.schema())];
        let mut reused = 0;
        ctx.resumable(&pictures, &Chunks::even(pictures.len(), self.part_size), "images", &outputs, |chunk, tally| {
            let mut rows = Vec::new();
            let (kept, to_search): (Vec<&Picture>, Vec<&Picture>) =
                chunk.iter().partition(|p| unchanged.contains(&p.image_id) && known.contains_key(&p.image_id));
            for p in kept {
                for row in &known[&p.image_id] {
                    match &row.found {
                        Found::NoFace => tally.skipped.add(format!("{}: no face found", p.uri)),
                        Found::Error(reason) => tally.failed.add(reason.clone()),
                        Found::Face { .. } => {}
                    }
                    rows.push(row.clone());
                }
                reused += 1;
            }
            let to_search: Vec<Picture> = to_search.into_iter().cloned().collect();
            for batch in to_search.chunks(DECODE_BATCH) {
                let decoded = loader.decode(batch);
                let searched = detectors
                    .map(&decoded, |detector, decoded| decoded.as_ref().map(|rgb| detector.detect_within(rgb, &settings, self.max_side)).map_err(Clone::clone));
                for (picture, searched) in batch.iter().zip(searched) {
                    let id = picture.image_id.clone();
                    let found = match searched {
                        Err(reason) => {
                            tally.failed.add(reason.clone());
                            rows.push(FaceRow { image_id: id, found: Found::Error(reason) });
                            continue;
                        }
                        Ok(found) => found?,
                    };
                    if found.is_empty() {
                        tally.skipped.add(format!("{}: no face found", picture.uri));
                        rows.push(FaceRow { image_id: id.clone(), found: Found::NoFace });
                    }
                    rows.extend(found.into_iter().enumerate().map(|(i, face)| FaceRow { image_id: id.clone(), found: Found::Face { index: i as i32, face } }));
                }
            }
            Ok(vec![vec![faces::batch(&rows)?]])
        })?;
        let (no_face, errors) = (ctx.tally.skipped.n, ctx.tally.failed.n);
        let kept = if ctx.has_input("known_faces") { format!(" ({reused} unchanged ones kept their known faces)") } else { String::new() };
        ctx.report.push(format!("detect: {} pictures{kept}; {no_face} without a face, {errors} unreadable", pictures.len()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_would_never_end_the_pyramid_are_refused() {
        let plan = |text: &str| plan_from::<Detect>(toml::from_str(text).unwrap()).err();
        assert!(plan("scale_factor = 1.0").unwrap().starts_with("scale_factor = 1"));
        assert!(plan("scale_factor = 0.0").is_some());
        assert!(plan("min_face_size = 0.0").unwrap().starts_with("min_face_size = 0"));
        assert!(plan("thresholds = [0.6, 0.7, 1.5]").is_some());
        assert!(plan("device = 'gpu'").unwrap().contains("use auto, cpu, cuda or cuda:N"));
        assert!(plan("").is_none());
    }
}
