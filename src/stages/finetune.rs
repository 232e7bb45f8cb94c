//! The `finetune` stage: the trainer's end-to-end classifier. A zoo model plus a softmax layer
//! over the evaluated identities, every layer fine-tuned on the training pictures the trainer
//! scraped (the protected users' cloaked, as far as they are), with random flips and
//! class-balanced sampling; then every test picture is classified. FaceCure's schedule is the
//! `facecure` preset (10 epochs x 500 steps, batch 32); `cpu` (3 x 40, batch 16) fits minutes on
//! two cores. A checkpoint is saved after every epoch under `<run>/checkpoints/<stage>/`, and a
//! stopped run continues from the last one. With `inputs.weights` (an `adapt` stage's
//! `tuned_models`) training starts from the robust network: the adaptive trainer's end-to-end
//! classifier.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::face::align::Alignment;
use crate::io::image::DecodeLimits;
use crate::io::pictures::PictureLoader;
use crate::learn::crops::crop_faces;
use crate::learn::finetune::{ScheduleSetting, check_model, fine_tune};
use crate::learn::linear::guesses;
use crate::models::{self, DeviceChoice};
use crate::pipeline::{Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::faces::{self, FACES};
use crate::tables::images::{self, Picture};
use crate::tables::predictions::{self, PREDICTIONS, Prediction};
use crate::tables::splits::{self, SPLITS, Side};
use crate::tables::tuned_models::{self, TUNED_MODELS};

pub const KIND: Kind = Kind {
    name: "finetune",
    source: file!(),
    summary: "end-to-end classifier: a zoo model and a softmax layer fine-tuned on the training pictures",
    inputs: &[Slot::new("images", images::ANY), Slot::new("faces", &[FACES]), Slot::new("splits", &[SPLITS])],
    optional_inputs: &[Slot::new("weights", &[TUNED_MODELS])],
    outputs: &[Slot::new("predictions", &[PREDICTIONS])],
    labels: &["model"],
    scope: Scope::Dataset,
    plan: plan_from::<Finetune>,
};

/// Configuration of the `finetune` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finetune {
    /// The zoo model to fine-tune (one of the zoo's own architectures).
    pub model: String,
    /// `"cpu"`, `"facecure"`, or a table with every field of a schedule.
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

/// The name its predictions carry in the `classifier` column.
pub const CLASSIFIER: &str = "end_to_end";

impl StageConfig for Finetune {
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
        let device = self.device.resolve()?;
        let splits = splits::read(&ctx.read("splits")?)?;
        let identities = splits.evaluated();
        let index: HashMap<&str, usize> = identities.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        let pictures = images::ok_pictures(&ctx.read("images")?)?;
        let labelled = |side: Side| -> Vec<(Picture, usize)> {
            pictures
                .iter()
                .filter_map(|p| {
                    let (who, s) = splits.by_image.get(&p.image_id)?;
                    (*s == side).then_some(())?;
                    index.get(who.as_str()).map(|&l| (p.clone(), l))
                })
                .collect()
        };
        let (train, test) = (labelled(Side::Train), labelled(Side::Test));
        if train.is_empty() || test.is_empty() {
            bail!("need training and test pictures of the evaluated identities (got {} and {})", train.len(), test.len());
        }
        let faces = faces::read(&ctx.read("faces")?)?;
        let alignment = Alignment::from_card(&models::card(&self.model)?)?;
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let (train_crops, left_out) = crop_faces(&mut loader, &train, &faces, alignment)?;
        for why in left_out {
            ctx.skip(format!("{why}: not trained on"));
        }
        let start = match ctx.has_input("weights") {
            true => Some(tuned_models::weights_of(&ctx.read("weights")?, &self.model)?.weights_uri),
            false => None,
        };
        ctx.log(&format!(
            "{} on {} pictures of {} identities, {} epochs x {} steps",
            self.model,
            train_crops.len(),
            identities.len(),
            schedule.epochs,
            schedule.steps_per_epoch
        ));
        let checkpoints = ctx.checkpoints();
        let tuned =
            fine_tune(&self.model, start.as_deref(), device, &train_crops, identities.len(), &schedule, &checkpoints, ctx.progress(schedule.steps(), "steps"))?;
        if let Some(epoch) = tuned.resumed_after {
            ctx.log(&format!("resumed after epoch {epoch} from {}", checkpoints.url()));
        }
        let (test_crops, left_out) = crop_faces(&mut loader, &test, &faces, alignment)?;
        for why in left_out {
            ctx.skip(format!("{why}: not classified"));
        }
        let mut rows = Vec::new();
        for (batch, range) in test_crops.batches(schedule.batch_size).zip((0..test_crops.len()).step_by(schedule.batch_size)) {
            let labels = &test_crops.labels[range..range + batch.size()[0] as usize];
            for ((id, &truth), g) in test_crops.ids[range..].iter().zip(labels).zip(guesses(&tuned.logits(&batch)?, labels)) {
                rows.push(Prediction {
                    image_id: id.clone(),
                    classifier: CLASSIFIER.into(),
                    model: self.model.clone(),
                    identity: identities[truth].clone(),
                    predicted: identities[g.class].clone(),
                    rank: g.rank as i32,
                });
            }
        }
        let accuracy = rows.iter().filter(|r| r.correct()).count() as f64 / rows.len().max(1) as f64;
        ctx.report.push(format!(
            "finetune: {} end to end, last epoch's loss {:.3}, test accuracy {accuracy:.3}",
            self.model,
            tuned.losses.last().copied().unwrap_or(f64::NAN)
        ));
        let batch = predictions::batch(&rows)?;
        ctx.write("predictions", batch.schema(), &[batch])?;
        Ok(())
    }
}
