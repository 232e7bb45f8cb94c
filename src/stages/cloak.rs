//! Cloaks: small perturbations that make face recognisers misidentify a person.
//!
//! - [`engine`]: the one attack loop; [`methods`]: Fawkes v1.0, Fawkes v0.3, LowKey and an
//!   anti-clustering cloak as configurations of it; [`ssim`]: the DSSIM budget;
//!   [`cloaker`]: loading a method and ensemble, measuring the result.
//! - The `cloak` stage cloaks the protected users' training pictures (by default), writes the
//!   cloaked pictures under `<run>/cloaked/<stage>/`, a `cloaked_images` table (the images
//!   table with those pictures swapped for their cloaked copies, same image ids) that the rest of
//!   a pipeline embeds and trains on, and the `cloaks` and `cloak_shifts` tables.


use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use arrow_array::{Array, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::attack::cloaker::{self, Cloaker, OutputFormat};
use crate::attack::methods::{self, Method};
use crate::attack::engine;
use crate::face::align::FaceGeometry;
use crate::stages::embed::{PictureLoader, Picture, all_faces, ok_pictures};
use crate::io::image::{DecodeLimits, to_chw_f32};
use crate::tables::{self as table, column};
use crate::io::hex;
use crate::pipeline::stage::{Context, Kind, Stage, build_from};
use crate::progress::info;

pub const KIND: Kind = Kind {
    name: "cloak",
    summary: "cloak the protected users' training pictures (Fawkes, Fawkes v0.3, LowKey, anti-clustering)",
    inputs: &["images", "faces", "splits"],
    optional_inputs: &[],
    outputs: &["cloaked_images", "cloaks", "cloak_shifts"],
    build: build_from::<Cloak>,
};

/// Which pictures a `cloak` stage changes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// The protected users' training pictures (the FaceCure protocol: test pictures stay clean).
    #[default]
    ProtectedTrain,
    /// Every picture of the protected users.
    Protected,
}

/// Configuration of the `cloak` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloak {
    pub method: Method,
    /// Strength preset; default: the method's first (Fawkes: low).
    #[serde(default)]
    pub mode: Option<String>,
    /// The attacker's models; default: see [`cloaker::default_ensemble`].
    #[serde(default)]
    pub ensemble: Option<Vec<String>>,
    #[serde(default)]
    pub which: Which,
    #[serde(default)]
    pub seed: i64,
    /// Pictures optimised together.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_format")]
    pub format: OutputFormat,
    #[serde(default = "default_quality")]
    pub jpeg_quality: u8,
    /// Override the method's number of steps (for quick experiments; recorded in `cloaks`).
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub limits: DecodeLimits,
}

fn default_batch() -> usize {
    4
}
fn default_format() -> OutputFormat {
    OutputFormat::Png
}
fn default_quality() -> u8 {
    95
}
fn default_device() -> String {
    "auto".into()
}

impl Cloak {
    fn mode(&self) -> String {
        self.mode.clone().unwrap_or_else(|| self.method.modes()[0].to_owned())
    }
}

/// A cloaked face's row of `cloaks` (without the shared method columns).
struct FaceRecord {
    image_id: String,
    face_index: i32,
    dssim: f64,
    quality: cloaker::Quality,
    within_budget: bool,
    seconds: f64,
    target: Option<String>,
    shifts: Vec<(String, bool, f64)>,
}

impl Stage for Cloak {
    /// Installing LPIPS weights changes what a perceptual budget computes, so it reruns the stage.
    fn fingerprint_extra(&self) -> Result<String> {
        let perceptual = methods::config(self.method, &self.mode(), self.seed)?.budget.perceptual.is_some();
        let path = crate::models::lpips::installed_path();
        Ok(match std::fs::metadata(&path) {
            Ok(m) if perceptual => format!("lpips {} bytes", m.len()),
            _ => String::new(),
        })
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let device = crate::models::device(&self.device)?;
        let mode = self.mode();
        let ensemble = self.ensemble.clone().unwrap_or_else(|| cloaker::default_ensemble(self.method, &mode));
        let mut cloaker = Cloaker::new(self.method, &mode, &ensemble, device, self.seed)?;
        if let Some(steps) = self.steps {
            cloaker = cloaker.with_steps(steps);
        }
        let images = ctx.read("images")?;
        let every_face = all_faces(&ctx.read("faces")?)?;
        let faces: HashMap<String, FaceGeometry> = every_face.iter().map(|(id, f)| (id.clone(), f[0])).collect();
        let splits = crate::stages::classify::read_splits(&ctx.read("splits")?)?;
        let protected = protected_users(&ctx.read("splits")?)?;
        let pictures = ok_pictures(&images)?;
        // Pictures to cloak, by user; and each user's clean training faces (for goals).
        let mut by_user: BTreeMap<String, Vec<Picture>> = BTreeMap::new();
        for p in &pictures {
            if let Some((who, is_train)) = splits.get(&p.image_id)
                && protected.contains(who)
                && (*is_train || self.which == Which::Protected)
            {
                by_user.entry(who.clone()).or_default().push(p.clone());
            }
        }
        let total: usize = by_user.values().map(Vec::len).sum();
        info(ctx.options.quiet, &format!("cloak: {total} pictures of {} users, {} {mode}, ensemble {ensemble:?}", by_user.len(), self.method.name()));
        info(ctx.options.quiet, &format!("cloak: {}", cloaker.notes()));
        let zoo = cloaker::load_with_alignment(&crate::models::cards()?.into_iter().filter(|c| crate::models::weights_path(c).is_ok()).map(|c| c.id).collect::<Vec<_>>(), device)?;
        let mut work = Work {
            cloaker: &cloaker,
            zoo: &zoo,
            ensemble: &ensemble,
            every_face: &every_face,
            loader: PictureLoader::new(self.limits.clone(), 16),
            out_dir: ctx.run_dir.child(&format!("cloaked/{}", ctx.stage)),
            quiet: ctx.options.quiet,
        };
        // Each batch of pictures is a part: an interrupted run keeps the batches it finished
        // (their pictures are on disk, their rows in the parts) and redoes only the rest.
        let cloak_parts = ctx.parts("cloaks", table::schema("cloaks").arrow(None));
        let shift_parts = ctx.parts("cloak_shifts", table::schema("cloak_shifts").arrow(None));
        let mut progress = ctx.progress(total as u64, "pictures");
        let (mut replaced, mut cloak_rows) = (HashMap::new(), Vec::new());
        let (mut k, mut resumed) = (0, 0);
        for (user, user_pictures) in &by_user {
            let chunks: Vec<&[Picture]> = user_pictures.chunks(self.batch_size.max(1)).collect();
            let mut goal = None;
            for chunk in chunks {
                if cloak_parts.is_done(k)? && shift_parts.is_done(k)? {
                    let rows = cloak_parts.read(k)?;
                    for p in cloaked_in(chunk, &rows)? {
                        replaced.insert(p.image_id.clone(), work.replacement_on_disk(p, self.format)?);
                    }
                    cloak_rows.extend(rows);
                    resumed += 1;
                } else {
                    if goal.is_none() {
                        goal = Some(self.goal_data(&cloaker, &mut work.loader, user, &pictures, &splits, &faces, &protected)?);
                    }
                    let records = work.cloak_chunk(self, chunk, goal.as_ref().expect("goal computed"), &mut replaced)?;
                    let (cloaks, shifts) = self.tables(&cloaker, &records)?;
                    // The cloaks part is written last: its presence marks the batch finished.
                    shift_parts.write(k, &[shifts])?;
                    cloak_parts.write(k, std::slice::from_ref(&cloaks))?;
                    cloak_rows.push(cloaks);
                }
                progress.add(chunk.len() as u64);
                k += 1;
            }
        }
        progress.finish();
        if resumed > 0 {
            info(ctx.options.quiet, &format!("cloak: resumed: {resumed} of {k} batches were done by an interrupted run"));
        }
        let cloaked_images = swap_images(&images, &replaced)?;
        ctx.write("cloaked_images", table::schema("images").arrow(None), &cloaked_images)?;
        cloak_parts.finish(k)?;
        shift_parts.finish(k)?;
        ctx.report.push(summary(self.method.name(), &mode, &cloak_rows)?);
        Ok(())
    }
}

/// What cloaking one batch of pictures needs, beside the stage's configuration.
struct Work<'a> {
    cloaker: &'a Cloaker,
    /// Every installed model of the zoo, for the `cloak_shifts` table.
    zoo: &'a [(Box<dyn crate::models::FaceModel>, crate::face::align::Alignment)],
    ensemble: &'a [String],
    every_face: &'a HashMap<String, Vec<FaceGeometry>>,
    loader: PictureLoader,
    out_dir: crate::io::Location,
    quiet: bool,
}

impl Work<'_> {
    /// Cloaks every face of a batch of pictures, writes the cloaked files and returns their rows.
    fn cloak_chunk(&mut self, stage: &Cloak, chunk: &[Picture], goal: &GoalData, replaced: &mut HashMap<String, Replacement>) -> Result<Vec<FaceRecord>> {
        let decoded = self.loader.decode(chunk)?;
        let mut targets = Vec::new();
        let mut kept = Vec::new();
        for (p, d) in chunk.iter().zip(decoded) {
            match (d, self.every_face.get(&p.image_id)) {
                (Ok(rgb), Some(picture_faces)) => {
                    // Every face of the picture is cloaked, as Fawkes does.
                    let px = Tensor::from_slice(&to_chw_f32(&rgb)).view([3, rgb.height() as i64, rgb.width() as i64]);
                    targets.push(engine::Target { pixels: px, faces: picture_faces.clone() });
                    kept.push(p);
                }
                (Err(reason), _) => info(self.quiet, &format!("cloak: {} left clean: {reason}", p.uri)),
                (Ok(_), None) => info(self.quiet, &format!("cloak: {} left clean: no face detected", p.uri)),
            }
        }
        let started = std::time::Instant::now();
        let cloaked = self.cloaker.cloak(&targets, goal.user.as_deref(), goal.target.as_ref().map(|t| t.1.as_slice()))?;
        let seconds = started.elapsed().as_secs_f64() / targets.len().max(1) as f64;
        let mut records = Vec::new();
        for ((p, t), c) in kept.into_iter().zip(&targets).zip(cloaked) {
            let rgb = cloaker::to_rgb8(&c.pixels);
            let written = Tensor::from_slice(&to_chw_f32(&rgb)).view(t.pixels.size().as_slice());
            let encoded = Bytes::from(cloaker::encode(&rgb, stage.format, stage.jpeg_quality)?);
            let rel = cloaked_path(&p.rel_path, stage.format);
            self.out_dir.put(&rel, encoded.clone())?;
            replaced.insert(p.image_id.clone(), self.replacement(&rel, &encoded, stage.format, (rgb.width(), rgb.height())));
            let quality = cloaker::quality(&t.pixels, &written);
            for (i, face) in t.faces.iter().enumerate() {
                let shifts = self
                    .zoo
                    .iter()
                    .map(|(m, a)| (m.card().id.clone(), self.ensemble.contains(&m.card().id), cloaker::shift(m.as_ref(), *a, &t.pixels, &written, face)))
                    .collect();
                records.push(FaceRecord {
                    image_id: p.image_id.clone(),
                    face_index: i as i32,
                    dssim: cloaker::face_dssim(&t.pixels, &written, face),
                    quality,
                    within_budget: c.within_budget,
                    seconds,
                    target: goal.target.as_ref().map(|t| t.0.clone()),
                    shifts,
                });
            }
        }
        Ok(records)
    }

    fn replacement(&self, rel: &str, encoded: &[u8], format: OutputFormat, (width, height): (u32, u32)) -> Replacement {
        (self.out_dir.url_of(rel), rel.to_owned(), encoded.len() as u64, hex(&Sha256::digest(encoded)), format.extension(), (width, height))
    }

    /// The replacement of a picture cloaked by an interrupted run, read back from its file.
    fn replacement_on_disk(&self, p: &Picture, format: OutputFormat) -> Result<Replacement> {
        let rel = cloaked_path(&p.rel_path, format);
        let encoded = self.out_dir.get(&rel)?;
        let size = image::ImageReader::new(std::io::Cursor::new(&encoded))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
            .with_context(|| format!("{}: a cloaked picture of an interrupted run does not read back", self.out_dir.url_of(&rel)))?;
        Ok(self.replacement(&rel, &encoded, format, size))
    }
}

/// The pictures of `chunk` that have rows in a finished part of `cloaks`.
fn cloaked_in<'a>(chunk: &'a [Picture], cloaks: &[RecordBatch]) -> Result<Vec<&'a Picture>> {
    let mut ids = std::collections::HashSet::new();
    for b in cloaks {
        let col = column::<StringArray>(b, "image_id")?;
        ids.extend((0..b.num_rows()).map(|i| col.value(i).to_owned()));
    }
    Ok(chunk.iter().filter(|p| ids.contains(&p.image_id)).collect())
}

/// Clean embeddings a method's goal needs: the user's own training faces, and for Fawkes v0.3
/// a target identity chosen among the 20 farthest of the other (unprotected) identities.
struct GoalData {
    user: Option<Vec<Tensor>>,
    target: Option<(String, Vec<Tensor>)>,
}

impl Cloak {
    #[allow(clippy::too_many_arguments)]
    fn goal_data(
        &self,
        cloaker: &Cloaker,
        loader: &mut PictureLoader,
        user: &str,
        pictures: &[Picture],
        splits: &HashMap<String, (String, bool)>,
        faces: &HashMap<String, FaceGeometry>,
        protected: &[String],
    ) -> Result<GoalData> {
        if !matches!(self.method, Method::Anticluster | Method::FawkesV03) {
            return Ok(GoalData { user: None, target: None });
        }
        let train_of = |who: &str| -> Vec<Picture> {
            pictures.iter().filter(|p| splits.get(&p.image_id).is_some_and(|(w, t)| w == who && *t) && faces.contains_key(&p.image_id)).take(20).cloned().collect()
        };
        let user_embeddings = embed_pictures(cloaker, loader, &train_of(user), faces)?;
        if self.method == Method::Anticluster {
            return Ok(GoalData { user: Some(user_embeddings), target: None });
        }
        // Fawkes v0.3: for each candidate, the minimum distance between its embeddings and the
        // user's (first ensemble model); pick at random among the 20 farthest.
        let mut candidates: Vec<String> = splits.values().map(|(w, _)| w.clone()).filter(|w| !protected.contains(w)).collect();
        candidates.sort();
        candidates.dedup();
        if candidates.is_empty() {
            bail!("fawkes_v03 needs unprotected identities to choose a target from");
        }
        let mut scored = Vec::new();
        for c in &candidates {
            let e = embed_pictures(cloaker, loader, &train_of(c), faces)?;
            let d = Tensor::cdist(&e[0], &user_embeddings[0], 2.0, None).min().double_value(&[]);
            scored.push((d, c.clone(), e));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(20);
        let pick = crate::rng::Rng::new(self.seed as u64 ^ 0xF4A3).below(scored.len() as u64) as usize;
        let (_, name, e) = scored.swap_remove(pick);
        Ok(GoalData { user: Some(user_embeddings), target: Some((name, e)) })
    }

    fn tables(&self, cloaker: &Cloaker, records: &[FaceRecord]) -> Result<(RecordBatch, RecordBatch)> {
        let n = records.len();
        let ensemble = cloaker.ensemble_ids().join(",");
        let cloaks: Vec<Arc<dyn Array>> = vec![
            Arc::new(StringArray::from_iter_values(records.iter().map(|r| &r.image_id))),
            Arc::new(Int32Array::from_iter_values(records.iter().map(|r| r.face_index))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(self.method.name(), n))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(cloaker.mode.as_str(), n))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(ensemble.as_str(), n))),
            Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(cloaker.steps() as i32, n))),
            Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(self.seed, n))),
            Arc::new(Float64Array::from_iter_values(records.iter().map(|r| r.dssim))),
            Arc::new(Float64Array::from_iter_values(records.iter().map(|r| r.quality.psnr))),
            Arc::new(Float64Array::from_iter_values(records.iter().map(|r| r.quality.linf))),
            Arc::new(Float64Array::from_iter_values(records.iter().map(|r| r.quality.l2))),
            Arc::new(BooleanArray::from(records.iter().map(|r| r.within_budget).collect::<Vec<_>>())),
            Arc::new(Float64Array::from_iter_values(records.iter().map(|r| r.seconds))),
            Arc::new(StringArray::from(records.iter().map(|r| r.target.clone()).collect::<Vec<_>>())),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(cloaker.notes(), n))),
        ];
        let shifts: Vec<(&FaceRecord, &(String, bool, f64))> = records.iter().flat_map(|r| r.shifts.iter().map(move |s| (r, s))).collect();
        let shift_cols: Vec<Arc<dyn Array>> = vec![
            Arc::new(StringArray::from_iter_values(shifts.iter().map(|(r, _)| &r.image_id))),
            Arc::new(Int32Array::from_iter_values(shifts.iter().map(|(r, _)| r.face_index))),
            Arc::new(StringArray::from_iter_values(shifts.iter().map(|(_, s)| &s.0))),
            Arc::new(BooleanArray::from(shifts.iter().map(|(_, s)| s.1).collect::<Vec<_>>())),
            Arc::new(Float64Array::from_iter_values(shifts.iter().map(|(_, s)| s.2))),
        ];
        Ok((table::batch("cloaks", None, cloaks)?, table::batch("cloak_shifts", None, shift_cols)?))
    }
}

/// L2-normalised embeddings (per ensemble model) of pictures' largest faces.
fn embed_pictures(cloaker: &Cloaker, loader: &mut PictureLoader, pictures: &[Picture], faces: &HashMap<String, FaceGeometry>) -> Result<Vec<Tensor>> {
    let decoded = loader.decode(pictures)?;
    let mut owned = Vec::new();
    for (p, d) in pictures.iter().zip(decoded) {
        if let Ok(rgb) = d {
            owned.push((Tensor::from_slice(&to_chw_f32(&rgb)).view([3, rgb.height() as i64, rgb.width() as i64]), faces[&p.image_id]));
        }
    }
    if owned.is_empty() {
        bail!("no clean training picture with a face to compute the goal from");
    }
    Ok(cloaker.embed_faces(&owned.iter().map(|(t, f)| (t, *f)).collect::<Vec<_>>()))
}

fn protected_users(splits: &[RecordBatch]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for b in splits {
        let (who, p) = (column::<StringArray>(b, "identity")?, column::<BooleanArray>(b, "protected")?);
        for i in 0..b.num_rows() {
            if p.value(i) && !out.iter().any(|w: &String| w == who.value(i)) {
                out.push(who.value(i).to_owned());
            }
        }
    }
    Ok(out)
}

/// `<identity>/<stem>_cloaked.<ext>` for a dataset-relative path.
pub fn cloaked_path(rel_path: &str, format: OutputFormat) -> String {
    let (dir, file) = rel_path.rsplit_once('/').map_or(("", rel_path), |(d, f)| (d, f));
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    let name = format!("{stem}_cloaked.{}", format.extension());
    if dir.is_empty() { name } else { format!("{dir}/{name}") }
}

/// New location, relative path, size, sha256, format and dimensions of a swapped picture.
pub(crate) type Replacement = (String, String, u64, String, &'static str, (u32, u32));

/// The images table with cloaked pictures' location, size and digest swapped in.
pub(crate) fn swap_images(images: &[RecordBatch], replaced: &HashMap<String, Replacement>) -> Result<Vec<RecordBatch>> {
    images
        .iter()
        .map(|b| {
            let ids = column::<StringArray>(b, "image_id")?;
            let get = |i: usize| replaced.get(ids.value(i));
            let strings = |name: &str, f: &dyn Fn(&Replacement) -> String| -> Result<Arc<dyn Array>> {
                let old = column::<StringArray>(b, name)?;
                Ok(Arc::new(StringArray::from((0..b.num_rows()).map(|i| get(i).map(f).or_else(|| old.is_valid(i).then(|| old.value(i).to_owned()))).collect::<Vec<_>>())))
            };
            let (w, h, bytes) = (column::<UInt32Array>(b, "width")?, column::<UInt32Array>(b, "height")?, column::<UInt64Array>(b, "bytes")?);
            let mut cols: Vec<Arc<dyn Array>> = b.columns().to_vec();
            let idx = |name: &str| b.schema().index_of(name).context("images column");
            cols[idx("uri")?] = strings("uri", &|r| r.0.clone())?;
            cols[idx("rel_path")?] = strings("rel_path", &|r| r.1.clone())?;
            cols[idx("sha256")?] = strings("sha256", &|r| r.3.clone())?;
            cols[idx("format")?] = strings("format", &|r| r.4.to_owned())?;
            cols[idx("bytes")?] = Arc::new(UInt64Array::from_iter_values((0..b.num_rows()).map(|i| get(i).map_or(bytes.value(i), |r| r.2))));
            cols[idx("width")?] = Arc::new(UInt32Array::from((0..b.num_rows()).map(|i| get(i).map(|r| r.5.0).or(w.is_valid(i).then(|| w.value(i)))).collect::<Vec<_>>()));
            cols[idx("height")?] = Arc::new(UInt32Array::from((0..b.num_rows()).map(|i| get(i).map(|r| r.5.1).or(h.is_valid(i).then(|| h.value(i)))).collect::<Vec<_>>()));
            table::batch("images", None, cols)
        })
        .collect()
}

fn summary(method: &str, mode: &str, cloaks: &[RecordBatch]) -> Result<String> {
    let n: usize = cloaks.iter().map(RecordBatch::num_rows).sum();
    if n == 0 {
        return Ok(format!("cloak: {method} {mode}: nothing to cloak"));
    }
    let mean = |name: &str| -> Result<f64> {
        let mut sum = 0.0;
        for b in cloaks {
            sum += column::<Float64Array>(b, name)?.values().iter().sum::<f64>();
        }
        Ok(sum / n as f64)
    };
    Ok(format!(
        "cloak: {method} {mode}: {n} faces; mean DSSIM {:.4}, PSNR {:.1} dB, L-inf {:.1}/255; {:.1} s per picture",
        mean("dssim")?,
        mean("psnr")?,
        mean("linf")?,
        mean("seconds")?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloaked_files_keep_the_folder_and_stem() {
        assert_eq!(cloaked_path("Ann/pic.1.jpg", OutputFormat::Png), "Ann/pic.1_cloaked.png");
        assert_eq!(cloaked_path("x.jpeg", OutputFormat::Jpg), "x_cloaked.jpg");
    }
}
