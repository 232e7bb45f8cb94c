//! The `cloak` stage: cloaks every face of the protected users' training pictures (by default)
//! with one of the methods of [`crate::attack`], writes the cloaked pictures under
//! `<run>/cloaked/<stage>/`, and the tables the rest of a pipeline needs:
//! - `cloaked_images`: the images table with those pictures swapped for their cloaked copies
//!   (same image ids), which the trainer's stages embed and train on;
//! - `cloaks`: per face, how it was cloaked and what it cost in image quality;
//! - `cloak_shifts`: per face and installed zoo model, how far its embedding moved.
//!
//! A protected picture that cannot be read or has no detected face is left clean and counted as
//! failed: the user asked for it to be cloaked. Each batch is saved as it finishes, so an
//! interrupted run keeps the batches it finished and redoes only the rest.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result, bail};
use arrow_array::RecordBatch;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::attack::cloaker::{self, Cloaker, OutputFormat};
use crate::attack::engine::{Convergence, Target};
use crate::attack::methods::{self, Method};
use crate::face::align::{Alignment, FaceGeometry};
use crate::io::image::{DecodeLimits, to_chw_f32};
use crate::io::pictures::PictureLoader;
use crate::io::{Location, sha256_hex};
use crate::models::{self, DeviceChoice, FaceModel};
use crate::pipeline::{Chunks, Context, Kind, Scope, Slot, StageConfig, Tally, check, plan_from};
use crate::rng::Rng;
use crate::tables::cloak_shifts::{self, CLOAK_SHIFTS, Shift};
use crate::tables::cloaks::{self, CLOAKS, CloakRow};
use crate::tables::faces::{self, FACES};
use crate::tables::images::{self, CLOAKED, ImageRow, Picture, Replacement};
use crate::tables::splits::{self, SPLITS, Splits};

pub const KIND: Kind = Kind {
    name: "cloak",
    source: file!(),
    summary: "cloak the protected users' training pictures (Fawkes, Fawkes v0.3, LowKey, anti-clustering)",
    inputs: &[Slot::new("images", images::ANY), Slot::new("faces", &[FACES]), Slot::new("splits", &[SPLITS])],
    optional_inputs: &[],
    outputs: &[Slot::new("cloaked_images", &[CLOAKED]), Slot::new("cloaks", &[CLOAKS]), Slot::new("cloak_shifts", &[CLOAK_SHIFTS])],
    labels: &["method", "mode"],
    scope: Scope::Picture,
    plan: plan_from::<Cloak>,
};

/// Which pictures a `cloak` stage changes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// The protected users' training pictures (the FaceCure protocol: test pictures stay clean).
    #[default]
    ProtectedTrain,
    /// Every picture of the protected users.
    Protected,
}

/// Configuration of the `cloak` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Also cloak this many pictures of each public identity (the split's `public`): the
    /// cloaked pictures the adaptive trainer and the cloak detector learn from.
    #[serde(default)]
    pub public_pictures: usize,
    #[serde(default)]
    pub seed: i64,
    /// Pictures cloaked together (also saved together: the chunk a rerun resumes from), all
    /// optimised at once unless `in_flight` says fewer.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Pictures optimised at once, when fewer than `batch_size`: the batch's other pictures
    /// wait, and each picture that finishes (with `early_stop`, often long before its
    /// schedule ends) makes room for the next, so the optimised batch stays full.
    #[serde(default)]
    pub in_flight: Option<usize>,
    /// Bound on the pixels optimised at once (pictures x padded height x width): a batch is
    /// split into groups of similar sizes within it, and each picture is worked on as its
    /// faces' region (see the attack engine). Memory follows this, not the largest picture.
    #[serde(default = "default_max_batch_pixels")]
    pub max_batch_pixels: i64,
    #[serde(default = "default_format")]
    pub format: OutputFormat,
    #[serde(default = "default_quality")]
    pub jpeg_quality: u8,
    /// Override the method's number of steps (for quick experiments; recorded in `cloaks`).
    #[serde(default)]
    pub steps: Option<usize>,
    /// Stop each picture once it has converged (`{ window = 5, tolerance = 0.02 }`, what the
    /// `cloak` command uses: its kept iterate within budget and gaining under 2% over 5 steps)
    /// instead of running the method's whole schedule; the `cloaks` table's `steps` says how
    /// many each took. Default: the fixed schedule, as the original tools run it (the study
    /// reproduces them).
    #[serde(default)]
    pub early_stop: Option<Convergence>,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub limits: DecodeLimits,
}

fn default_batch() -> usize {
    4
}
fn default_max_batch_pixels() -> i64 {
    crate::attack::engine::DEFAULT_MAX_BATCH_PIXELS
}
fn default_format() -> OutputFormat {
    OutputFormat::Png
}
fn default_quality() -> u8 {
    95
}

impl Cloak {
    fn mode(&self) -> String {
        self.mode.clone().unwrap_or_else(|| self.method.modes()[0].to_owned())
    }

    fn ensemble(&self) -> Vec<String> {
        self.ensemble.clone().unwrap_or_else(|| cloaker::default_ensemble(self.method, &self.mode()))
    }

    fn perceptual(&self) -> bool {
        methods::config(self.method, &self.mode(), self.seed).is_ok_and(|c| c.budget.perceptual.is_some())
    }
}

/// The installed zoo models, whose embedding shifts `cloak_shifts` records.
fn installed_zoo() -> Result<Vec<String>> {
    Ok(models::cards()?.into_iter().filter(|c| c.check().is_ok() && models::weights_path(c).is_ok()).map(|c| c.id).collect())
}

impl StageConfig for Cloak {
    fn validate(&self) -> Result<(), String> {
        methods::config(self.method, &self.mode(), self.seed).map_err(|e| format!("mode = {:?}: {e}", self.mode()))?;
        let ensemble = self.ensemble();
        check(!ensemble.is_empty(), "ensemble", &ensemble, "at least one model id")?;
        for id in &ensemble {
            models::check_usable(id).map_err(|e| format!("ensemble: {id:?}: {e}"))?;
        }
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")?;
        if let Some(n) = self.in_flight {
            check(n >= 1, "in_flight", n, "at least 1")?;
        }
        check(self.max_batch_pixels >= 1, "max_batch_pixels", self.max_batch_pixels, "at least 1")?;
        check((1..=100).contains(&self.jpeg_quality), "jpeg_quality", self.jpeg_quality, "within 1..100")?;
        check(self.steps.is_none_or(|s| s >= 1), "steps", self.steps, "at least 1")?;
        if let Some(c) = self.early_stop {
            check(c.window >= 1, "early_stop.window", c.window, "at least 1")?;
            check(c.tolerance >= 0.0, "early_stop.tolerance", c.tolerance, "at least 0")?;
        }
        self.limits.check()?;
        self.device.check()
    }

    /// The weights of the ensemble, of every zoo model measured for `cloak_shifts`, and of
    /// LPIPS when the method's budget weighs it (installing it changes what the budget computes).
    fn fingerprint_material(&self, _log: &dyn Fn(&str)) -> Result<serde_json::Value> {
        let mut ids = self.ensemble();
        ids.extend(installed_zoo()?);
        ids.sort();
        ids.dedup();
        let weights = ids.iter().map(|id| models::digest(id)).collect::<Result<Vec<_>>>()?;
        let lpips = crate::models::lpips::installed_path();
        let lpips = if self.perceptual() && lpips.is_file() { Some(models::file_digest(&lpips)?) } else { None };
        Ok(serde_json::json!({ "weights": weights, "lpips": lpips }))
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let device = self.device.resolve()?;
        let (mode, ensemble) = (self.mode(), self.ensemble());
        let mut cloaker = Cloaker::new(self.method, &mode, &ensemble, device, self.seed)?
            .with_max_batch_pixels(self.max_batch_pixels)
            .with_in_flight(self.in_flight)
            .with_stop(self.early_stop);
        if let Some(steps) = self.steps {
            cloaker = cloaker.with_steps(steps);
        }
        // Goals (a user's training faces, a target identity) draw on every picture; a shard
        // cloaks and writes only its own.
        let rows: Vec<ImageRow> = images::read(&ctx.read("images")?)?.into_iter().filter(|r| ctx.owns(&r.image_id)).collect();
        let pictures = images::ok_pictures(&ctx.read("images")?)?;
        let faces = faces::read(&ctx.read("faces")?)?;
        let splits = splits::read(&ctx.read("splits")?)?;
        let to_cloak: Vec<Picture> = self.pictures_to_cloak(&pictures, &splits).into_iter().filter(|p| ctx.owns(&p.image_id)).collect();
        let users = to_cloak.iter().map(|p| p.identity.as_str()).collect::<std::collections::BTreeSet<_>>().len();
        ctx.log(&format!("{} pictures of {users} users, {} {mode}, ensemble {ensemble:?}", to_cloak.len(), self.method.name()));
        ctx.log(cloaker.notes());
        let zoo = cloaker::load_with_alignment(&installed_zoo()?, device)?;
        let out_dir = ctx.files_dir("cloaked");
        let mut work = Work {
            stage: self,
            cloaker: &cloaker,
            zoo: &zoo,
            faces: &faces,
            splits: &splits,
            pictures: &pictures,
            loader: PictureLoader::new(self.limits.clone(), 16),
            out_dir: &out_dir,
            goals: HashMap::new(),
        };
        let outputs = [("cloaks", cloaks::batch(&[])?.schema()), ("cloak_shifts", cloak_shifts::batch(&[])?.schema())];
        let chunks = Chunks::grouped(&to_cloak, self.batch_size, |p| p.identity.clone());
        ctx.resumable(&to_cloak, &chunks, "pictures", &outputs, |chunk, tally| work.cloak_chunk(chunk, tally))?;
        // The cloaked copies, whether made now or by an interrupted run, are read back from disk.
        let cloaked = cloaks::read_figures(&ctx.read_output("cloaks")?)?;
        let mut copies = HashMap::new();
        for p in to_cloak.iter().filter(|p| cloaked.iter().any(|(id, _)| *id == p.image_id)) {
            copies.insert(p.image_id.clone(), replacement_on_disk(&out_dir, p, self.format)?);
        }
        let batch = images::batch(CLOAKED, &images::with_replacements(&rows, &copies))?;
        ctx.write("cloaked_images", batch.schema(), &[batch])?;
        ctx.report.push(summary(self.method.name(), &mode, &cloaked, ctx.tally.failed.n));
        Ok(())
    }
}

impl Cloak {
    /// The pictures this stage changes, identity by identity (each one's together): the
    /// protected users' (their training pictures, or all), then the first `public_pictures` of
    /// each public identity.
    fn pictures_to_cloak(&self, pictures: &[Picture], splits: &Splits) -> Vec<Picture> {
        let mut by_user: BTreeMap<&str, Vec<Picture>> = BTreeMap::new();
        for p in pictures {
            let Some((who, side)) = splits.by_image.get(&p.image_id) else { continue };
            let protected = splits.protected.contains(who) && (*side == splits::Side::Train || self.which == Which::Protected);
            let public = splits.public.contains(who) && by_user.get(who.as_str()).is_none_or(|v| v.len() < self.public_pictures);
            if protected || public {
                by_user.entry(who).or_default().push(p.clone());
            }
        }
        by_user.into_values().flatten().collect()
    }
}

/// What cloaking one batch of pictures needs, beside the stage's configuration.
struct Work<'a> {
    stage: &'a Cloak,
    cloaker: &'a Cloaker,
    /// Every installed model of the zoo, for the `cloak_shifts` table.
    zoo: &'a [(Box<dyn FaceModel>, Alignment)],
    faces: &'a HashMap<String, Vec<FaceGeometry>>,
    splits: &'a Splits,
    pictures: &'a [Picture],
    loader: PictureLoader,
    out_dir: &'a Location,
    /// Per user, the clean embeddings a method's goal needs (computed once).
    goals: HashMap<String, GoalData>,
}

/// Clean embeddings a method's goal needs: the user's own training faces, and for Fawkes v0.3
/// a target identity chosen among the 20 farthest of the other (unprotected) identities.
struct GoalData {
    user: Option<Vec<Tensor>>,
    target: Option<(String, Vec<Tensor>)>,
}

impl Work<'_> {
    /// Cloaks every face of a batch of pictures (one user's), writes the cloaked files and
    /// returns the batch's rows of `cloaks` and `cloak_shifts`.
    fn cloak_chunk(&mut self, chunk: &[Picture], tally: &mut Tally) -> Result<Vec<Vec<RecordBatch>>> {
        let mut targets = Vec::new();
        let mut kept = Vec::new();
        for (p, decoded) in chunk.iter().zip(self.loader.decode(chunk)) {
            match (decoded, self.faces.get(&p.image_id)) {
                (Ok(rgb), Some(picture_faces)) => {
                    // Every face of the picture is cloaked, as Fawkes does.
                    targets.push(Target { pixels: pixels(&rgb), faces: picture_faces.clone() });
                    kept.push(p);
                }
                (Err(reason), _) => tally.failed.add(format!("{reason}: left uncloaked")),
                (Ok(_), None) => tally.failed.add(format!("{}: left uncloaked: no face detected", p.uri)),
            }
        }
        if targets.is_empty() {
            return Ok(vec![vec![], vec![]]);
        }
        let user = &chunk[0].identity;
        if !self.goals.contains_key(user) {
            let goal = self.goal_data(user)?;
            self.goals.insert(user.clone(), goal);
        }
        let goal = &self.goals[user];
        let started = std::time::Instant::now();
        let cloaked = self.cloaker.cloak(&targets, goal.user.as_deref(), goal.target.as_ref().map(|t| t.1.as_slice()))?;
        let seconds = started.elapsed().as_secs_f64() / targets.len() as f64;
        let (mut cloak_rows, mut shift_rows) = (Vec::new(), Vec::new());
        let ensemble = self.cloaker.ensemble_ids().join(",");
        for ((p, t), c) in kept.into_iter().zip(&targets).zip(cloaked) {
            let rgb = cloaker::to_rgb8(&c.pixels);
            let written = Tensor::from_slice(&to_chw_f32(&rgb)).view(t.pixels.size().as_slice());
            let encoded = cloaker::encode(&rgb, self.stage.format, self.stage.jpeg_quality)?;
            self.out_dir.put(&cloaked_path(&p.rel_path, self.stage.format), Bytes::from(encoded))?;
            let quality = cloaker::quality(&t.pixels, &written);
            for (i, face) in t.faces.iter().enumerate() {
                for (m, a) in self.zoo {
                    let id = &m.card().id;
                    let shift = cloaker::shift(m.as_ref(), *a, &t.pixels, &written, face)?;
                    shift_rows.push(Shift {
                        image_id: p.image_id.clone(),
                        face_index: i as i32,
                        model: id.clone(),
                        in_ensemble: self.cloaker.ensemble_ids().contains(id),
                        cosine_distance: shift,
                    });
                }
                cloak_rows.push(CloakRow {
                    image_id: p.image_id.clone(),
                    face_index: i as i32,
                    method: self.stage.method.name().to_owned(),
                    mode: self.cloaker.mode.clone(),
                    ensemble: ensemble.clone(),
                    steps: c.steps as i32,
                    seed: self.stage.seed,
                    dssim: cloaker::face_dssim(&t.pixels, &written, face),
                    psnr: quality.psnr,
                    linf: quality.linf,
                    l2: quality.l2,
                    within_budget: c.within_budget,
                    seconds,
                    target: goal.target.as_ref().map(|t| t.0.clone()),
                    notes: self.cloaker.notes().to_owned(),
                });
            }
        }
        Ok(vec![vec![cloaks::batch(&cloak_rows)?], vec![cloak_shifts::batch(&shift_rows)?]])
    }

    fn goal_data(&mut self, user: &str) -> Result<GoalData> {
        let method = self.stage.method;
        if !matches!(method, Method::Anticluster | Method::FawkesV03) {
            return Ok(GoalData { user: None, target: None });
        }
        let user_embeddings = self.embed_training_faces(user)?;
        if method == Method::Anticluster {
            return Ok(GoalData { user: Some(user_embeddings), target: None });
        }
        // Fawkes v0.3: for each candidate, the minimum distance between its embeddings and the
        // user's (first ensemble model); pick at random among the 20 farthest.
        let candidates: Vec<String> = self.splits.identities().into_iter().filter(|w| !self.splits.protected.contains(w) && w != user).collect();
        if candidates.is_empty() {
            bail!("fawkes_v03 needs unprotected identities to choose a target from");
        }
        let mut scored = Vec::new();
        for c in &candidates {
            let e = self.embed_training_faces(c)?;
            let d = Tensor::cdist(&e[0], &user_embeddings[0], 2.0, None).min().double_value(&[]);
            scored.push((d, c.clone(), e));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(20);
        let pick = Rng::new(self.stage.seed as u64 ^ 0xF4A3).below(scored.len() as u64) as usize;
        let (_, name, e) = scored.swap_remove(pick);
        Ok(GoalData { user: Some(user_embeddings), target: Some((name, e)) })
    }

    /// L2-normalised clean embeddings (per ensemble model) of the largest faces of up to 20 of
    /// `identity`'s training pictures.
    fn embed_training_faces(&mut self, identity: &str) -> Result<Vec<Tensor>> {
        let chosen: Vec<Picture> =
            self.pictures.iter().filter(|p| self.splits.is_train_of(&p.image_id, identity) && self.faces.contains_key(&p.image_id)).take(20).cloned().collect();
        let decoded = self.loader.decode(&chosen);
        let owned: Vec<(Tensor, FaceGeometry)> =
            chosen.iter().zip(decoded).filter_map(|(p, d)| d.ok().map(|rgb| (pixels(&rgb), self.faces[&p.image_id][0]))).collect();
        if owned.is_empty() {
            bail!("{identity}: no clean training picture with a face to compute the cloak's goal from");
        }
        self.cloaker.embed_faces(&owned.iter().map(|(t, f)| (t, *f)).collect::<Vec<_>>())
    }
}

fn pixels(rgb: &image::RgbImage) -> Tensor {
    Tensor::from_slice(&to_chw_f32(rgb)).view([3, rgb.height() as i64, rgb.width() as i64])
}

/// The cloaked copy of `p` as written under `out_dir`, read back (size, digest, dimensions).
fn replacement_on_disk(out_dir: &Location, p: &Picture, format: OutputFormat) -> Result<Replacement> {
    let rel_path = cloaked_path(&p.rel_path, format);
    let encoded = out_dir.get(&rel_path)?;
    let (width, height) = image::ImageReader::new(std::io::Cursor::new(&encoded))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok())
        .with_context(|| format!("{}: a cloaked picture does not read back", out_dir.url_of(&rel_path)))?;
    Ok(Replacement {
        uri: out_dir.url_of(&rel_path),
        rel_path,
        format: format.extension().to_owned(),
        width,
        height,
        bytes: encoded.len() as u64,
        sha256: sha256_hex(&encoded),
    })
}

/// `<identity>/<stem>_cloaked.<ext>` for a dataset-relative path.
pub fn cloaked_path(rel_path: &str, format: OutputFormat) -> String {
    let (dir, file) = rel_path.rsplit_once('/').map_or(("", rel_path), |(d, f)| (d, f));
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    let name = format!("{stem}_cloaked.{}", format.extension());
    if dir.is_empty() { name } else { format!("{dir}/{name}") }
}

fn summary(method: &str, mode: &str, cloaked: &[(String, [f64; 4])], left_clean: u64) -> String {
    let n = cloaked.len();
    let clean = if left_clean > 0 { format!("; {left_clean} pictures left uncloaked") } else { String::new() };
    if n == 0 {
        return format!("cloak: {method} {mode}: no face cloaked{clean}");
    }
    let mean = |k: usize| cloaked.iter().map(|c| c.1[k]).sum::<f64>() / n as f64;
    format!(
        "cloak: {method} {mode}: {n} faces; mean DSSIM {:.4}, PSNR {:.1} dB, L-inf {:.1}/255; {:.1} s per picture{clean}",
        mean(0),
        mean(1),
        mean(2),
        mean(3)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloaked_files_keep_the_folder_and_stem() {
        assert_eq!(cloaked_path("Ann/pic.1.jpg", OutputFormat::Png), "Ann/pic.1_cloaked.png");
        assert_eq!(cloaked_path("x.jpeg", OutputFormat::Jpg), "x_cloaked.jpg");
    }

    #[test]
    fn a_mode_the_method_lacks_is_a_plan_error() {
        let err = plan_from::<Cloak>(toml::from_str("method = 'lowkey'\nmode = 'high'").unwrap()).err().unwrap();
        assert!(err.contains("lowkey has no mode \"high\"") && err.contains("default"), "{err}");
        let err = plan_from::<Cloak>(toml::from_str("method = 'fawkes'\njpeg_quality = 0").unwrap()).err().unwrap();
        assert!(err.starts_with("jpeg_quality = 0"), "{err}");
        let err = plan_from::<Cloak>(toml::from_str("method = 'fawkes'\nensemble = ['no_such_model']").unwrap()).err().unwrap();
        assert!(err.contains("no_such_model"), "{err}");
    }
}
