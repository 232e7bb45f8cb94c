//! The `adapt` stage: the adaptive trainer's robust feature extractor, as FaceCure builds it. A
//! zoo model is fine-tuned (with a softmax layer over the public identities) on the public
//! identities' pictures, clean and cloaked by the same public tools, each with its correct
//! label; the evaluated users take no part. The fine-tuned network is written under
//! `<run>/checkpoints/<stage>/` and described in `tuned_models`, which `embed` and `finetune`
//! stages read through their `weights` slot.

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
        let index: HashMap<&str, usize> = public.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        // The public identities' clean pictures, and their cloaked copies, with their labels.
        let clean_rows = images::read(&ctx.read("images")?)?;
        let cloaked_rows = images::read(&ctx.read("cloaked_images")?)?;
        let replaced = images::replaced(&clean_rows, &cloaked_rows);
        let clean: Vec<Picture> = clean_rows.iter().filter(|r| r.status == Status::Ok).map(ImageRow::picture).collect::<Result<_>>()?;
        let cloaked: Vec<Picture> =
            cloaked_rows.iter().filter(|r| r.status == Status::Ok && replaced.contains(&r.image_id)).map(ImageRow::picture).collect::<Result<_>>()?;
        let labelled = |pictures: Vec<Picture>| -> Vec<(Picture, usize)> {
            pictures.into_iter().filter_map(|p| index.get(p.identity.as_str()).map(|&l| (p, l))).collect()
        };
        let (clean, cloaked) = (labelled(clean), labelled(cloaked));
        let n_cloaked = cloaked.len();
        let training: Vec<(Picture, usize)> = clean.into_iter().chain(cloaked).collect();
        if let Some(p) = training.iter().find(|(p, _)| !splits.public.contains(&p.identity)) {
            bail!("{}: an evaluated user's picture would train the adaptive model", p.0.uri);
        }
        let faces = faces::read(&ctx.read("faces")?)?;
        let alignment = Alignment::from_card(&models::card(&self.model)?)?;
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let (crops, left_out) = crop_faces(&mut loader, &training, &faces, alignment)?;
        for why in left_out {
            ctx.skip(format!("{why}: not trained on"));
        }
        ctx.log(&format!("{} on {} pictures ({n_cloaked} cloaked) of {} public identities", self.model, crops.len(), public.len()));
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
