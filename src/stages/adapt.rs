//! The `adapt` stage: the adaptive trainer's robust feature extractor, as FaceCure builds it. A
//! zoo model is fine-tuned (with a softmax layer over the public identities) on the public
//! identities' pictures, clean and cloaked by the same public tools, each with its correct
//! label; the evaluated users take no part. The fine-tuned network is written under
//! `<run>/checkpoints/<stage>/` and described in `tuned_models`, which `embed` and `finetune`
//! stages read through their `weights` slot.
//!
//! Wired to one cloak table (the default), the stage fans out with the cloak: one robust model
//! per tool. Wired to several (`cloaked_images = "cloaked_images[*]"`), it trains one model on
//! every tool's cloaks at once, as FaceCure's `train_robust_features.py` did with Fawkes v1.0,
//! Fawkes v0.3 and LowKey pictures.

use std::collections::HashMap;

use anyhow::{Result, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::face::align::Alignment;
use crate::io::image::DecodeLimits;
use crate::io::pictures::PictureLoader;
use crate::learn::crops::crop_faces;
use crate::learn::finetune::{ScheduleSetting, check_model, fine_tune};
use crate::models::{self, DeviceChoice};
use crate::pipeline::{Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::faces::{self, FACES};
use crate::tables::images::{self, CLOAKED, ImageRow, Picture, Status};
use crate::tables::splits::{self, SPLITS};
use crate::tables::tuned_models::{self, TUNED_MODELS, TunedModel};

pub const KIND: Kind = Kind {
    name: "adapt",
    source: file!(),
    summary: "adaptive trainer: fine-tune a zoo model on the public identities' clean and cloaked pictures",
    inputs: &[Slot::new("images", images::ANY), Slot::new("cloaked_images", &[CLOAKED]), Slot::new("faces", &[FACES]), Slot::new("splits", &[SPLITS])],
    optional_inputs: &[],
    outputs: &[Slot::new("tuned_models", &[TUNED_MODELS])],
    labels: &[],
    scope: Scope::Dataset,
    plan: plan_from::<Adapt>,
};

/// Configuration of the `adapt` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adapt {
    /// The zoo model made robust (one of the zoo's own architectures).
    pub model: String,
    /// `"cpu"`, `"facecure"` (FaceCure's robust features: 10 x 500 steps, batch 32), or a table.
    #[serde(default)]
    pub schedule: ScheduleSetting,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub limits: DecodeLimits,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    16
}

impl StageConfig for Adapt {
    fn validate(&self) -> Result<(), String> {
        check_model(&self.model)?;
        self.schedule.resolve()?;
        check(self.concurrency >= 1, "concurrency", self.concurrency, "at least 1")?;
        self.limits.check()?;
        self.device.check()
    }

    fn fingerprint_material(&self, _log: &dyn Fn(&str)) -> Result<serde_json::Value> {
        models::digest(&self.model)
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let schedule = self.schedule.resolve().map_err(anyhow::Error::msg)?;
        let splits = splits::read(&ctx.read("splits")?)?;
        let public: Vec<String> = splits.public.iter().cloned().collect();
        if public.is_empty() {
            bail!("the adaptive trainer learns from public identities, and the split names none (set split.public or split.public_count)");
        }
        let clean_rows = images::read(&ctx.read("images")?)?;
        let cloaks: Vec<Vec<ImageRow>> = ctx.read_labelled("cloaked_images")?.into_iter().map(|(_, batches)| images::read(&batches)).collect::<Result<_>>()?;
        let TrainingSet { pictures: training, cloaked_per_cloak } = training_set(&public, &clean_rows, &cloaks)?;
        let n_cloaked: usize = cloaked_per_cloak.iter().sum();
        if let Some((p, _)) = training.iter().find(|(p, _)| !splits.public.contains(&p.identity)) {
            bail!("{}: an evaluated user's picture would train the adaptive model", p.uri);
        }
        let faces = faces::read(&ctx.read("faces")?)?;
        let alignment = Alignment::from_card(&models::card(&self.model)?)?;
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let (crops, left_out) = crop_faces(&mut loader, &training, &faces, alignment)?;
        for why in left_out {
            ctx.skip(format!("{why}: not trained on"));
        }
        ctx.log(&format!(
            "{} on {} pictures ({n_cloaked} cloaked: {cloaked_per_cloak:?} by each of {} cloaks) of {} public identities",
            self.model,
            crops.len(),
            cloaks.len(),
            public.len()
        ));
        let checkpoints = ctx.checkpoints();
        let tuned =
            fine_tune(&self.model, None, self.device.resolve()?, &crops, public.len(), &schedule, &checkpoints, ctx.progress(schedule.steps(), "steps"))?;
        checkpoints.put("robust.safetensors", Bytes::from(tuned.network_weights()?))?;
        let row = TunedModel {
            model: self.model.clone(),
            weights_uri: checkpoints.url_of("robust.safetensors"),
            epochs: schedule.epochs as i32,
            steps: schedule.steps() as i64,
            pictures: crops.len() as i64,
            identities: public.len() as i64,
            trained_identities: public.join(","),
            final_loss: tuned.losses.last().copied().unwrap_or(f64::NAN),
            resumed_after_epoch: tuned.resumed_after.map(|e| e as i32),
        };
        ctx.report.push(format!(
            "adapt: {} fine-tuned on {} pictures ({n_cloaked} cloaked) of {} public identities; loss per epoch {:?}",
            self.model,
            crops.len(),
            public.len(),
            tuned.losses.iter().map(|l| (l * 1000.0).round() / 1000.0).collect::<Vec<_>>()
        ));
        let batch = tuned_models::batch(&[row])?;
        ctx.write("tuned_models", batch.schema(), &[batch])?;
        Ok(())
    }
}

/// What the adaptive model trains on: every public identity's clean pictures and, from each cloak
/// table, the copies that cloak made of them, each with its identity's label.
#[derive(Debug)]
struct TrainingSet {
    pictures: Vec<(Picture, usize)>,
    /// How many cloaked copies each cloak table gave, in the order of the tables.
    cloaked_per_cloak: Vec<usize>,
}

/// The public identities' clean pictures in `clean`, then the pictures each table of `cloaks`
/// replaced (a cloak table holds every row, the ones it left clean too). Several tables train
/// one model on several tools' cloaks, as FaceCure's robust extractor learned from Fawkes v1.0,
/// Fawkes v0.3 and LowKey pictures at once; each is compared with `clean` on its own, so a
/// picture one cloak left alone is not taken for a cloaked copy because another cloak replaced it.
fn training_set(public: &[String], clean: &[ImageRow], cloaks: &[Vec<ImageRow>]) -> Result<TrainingSet> {
    let index: HashMap<&str, usize> = public.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let mut pictures = labelled(clean.iter(), &index)?;
    let mut cloaked_per_cloak = Vec::with_capacity(cloaks.len());
    for rows in cloaks {
        let replaced = images::replaced(clean, rows);
        let cloaked = labelled(rows.iter().filter(|r| replaced.contains(&r.image_id)), &index)?;
        cloaked_per_cloak.push(cloaked.len());
        pictures.extend(cloaked);
    }
    Ok(TrainingSet { pictures, cloaked_per_cloak })
}

/// The decoded pictures among `rows` of the identities `index` labels, with their labels.
fn labelled<'a>(rows: impl Iterator<Item = &'a ImageRow>, index: &HashMap<&str, usize>) -> Result<Vec<(Picture, usize)>> {
    rows.filter(|r| r.status == Status::Ok).filter_map(|r| index.get(r.identity.as_str()).map(|&l| Ok((r.picture()?, l)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(who: &str, id: &str, root: &str) -> ImageRow {
        ImageRow {
            image_id: id.into(),
            identity: who.into(),
            uri: format!("{root}/{who}/{id}.png"),
            rel_path: format!("{who}/{id}.png"),
            status: Status::Ok,
            error: None,
            format: Some("png".into()),
            width: Some(4),
            height: Some(4),
            exif_orientation: Some(1),
            bytes: 10,
            sha256: Some("00".into()),
            original_uri: format!("/data/{who}/{id}.png"),
        }
    }

    #[test]
    fn each_cloak_gives_only_the_copies_it_made() {
        let public = vec!["pia".to_owned(), "pat".to_owned()];
        // Framed pictures (every row a copy of the dataset's file); "eve" is evaluated.
        let clean = vec![row("pia", "a", "/run/frame"), row("pia", "b", "/run/frame"), row("pat", "c", "/run/frame"), row("eve", "d", "/run/frame")];
        let fawkes = vec![row("pia", "a", "/run/fawkes"), row("pia", "b", "/run/frame"), row("pat", "c", "/run/fawkes"), row("eve", "d", "/run/fawkes")];
        let lowkey = vec![row("pia", "a", "/run/frame"), row("pia", "b", "/run/lowkey"), row("pat", "c", "/run/frame"), row("eve", "d", "/run/frame")];
        let set = training_set(&public, &clean, &[fawkes, lowkey]).unwrap();
        let uris: Vec<(&str, usize)> = set.pictures.iter().map(|(p, l)| (p.uri.as_str(), *l)).collect();
        assert_eq!(
            uris,
            [
                ("/run/frame/pia/a.png", 0),
                ("/run/frame/pia/b.png", 0),
                ("/run/frame/pat/c.png", 1),
                ("/run/fawkes/pia/a.png", 0),
                ("/run/fawkes/pat/c.png", 1),
                ("/run/lowkey/pia/b.png", 0)
            ]
        );
        assert_eq!(set.cloaked_per_cloak, [2, 1]);
    }

    #[test]
    fn a_failed_picture_trains_nothing() {
        let public = vec!["pia".to_owned()];
        let clean = vec![row("pia", "a", "/data"), ImageRow { status: Status::Error, error: Some("truncated".into()), ..row("pia", "b", "/data") }];
        let set = training_set(&public, &clean, &[vec![row("pia", "a", "/run/lowkey"), row("pia", "b", "/data")]]).unwrap();
        assert_eq!(set.pictures.len(), 2);
        assert_eq!(set.cloaked_per_cloak, [1]);
    }
}
