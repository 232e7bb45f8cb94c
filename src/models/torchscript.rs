//! Users' own models: a TorchScript module plus a model card in the models folder.
//!
//! The module must take float32 NCHW RGB pixels in 0..255 at the card's input size (do any
//! normalisation inside it) and return [N, output_dim] embeddings; see the README for an
//! export example. Gradients flow through it like through our own modules, so cloaks can use it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use tch::{CModule, Device, Tensor};

use super::{FaceModel, ModelCard};

pub struct TorchScriptModel {
    card: ModelCard,
    module: CModule,
    device: Device,
}

/// Loads a TorchScript file and checks its output dimension against the card.
pub fn load(card: ModelCard, path: &Path, device: Device) -> Result<Box<dyn FaceModel>> {
    let mut module = CModule::load_on_device(path, device).with_context(|| format!("{}: not a loadable TorchScript module", path.display()))?;
    module.set_eval();
    let [h, w] = card.input_size;
    let probe = tch::no_grad(|| module.forward_ts(&[Tensor::zeros([1, 3, h, w], (tch::Kind::Float, device))]))
        .with_context(|| format!("{}: forward on a 1x3x{h}x{w} input failed", path.display()))?;
    if probe.size() != [1, card.output_dim] {
        bail!("{}: output shape {:?}, but the card says output_dim = {}", path.display(), probe.size(), card.output_dim);
    }
    Ok(Box::new(TorchScriptModel { card, module, device }))
}

impl FaceModel for TorchScriptModel {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn embed(&self, pictures: &Tensor) -> Result<Tensor> {
        let out = self.module.forward_ts(&[pictures]).map_err(|e| {
            // TorchScript's message is a traceback; the line naming the exception says why.
            let text = e.to_string();
            let why = text
                .lines()
                .rev()
                .find(|l| l.contains("Error: "))
                .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
                .unwrap_or_default()
                .trim()
                .to_owned();
            anyhow::anyhow!("model {}: its TorchScript forward failed on a batch of {:?}: {why}", self.card.id, pictures.size())
        })?;
        if out.dim() != 2 || out.size()[1] != self.card.output_dim {
            bail!(
                "model {}: forward returned {:?} for a batch of {:?}, but the card says [N, {}]",
                self.card.id,
                out.size(),
                pictures.size(),
                self.card.output_dim
            );
        }
        Ok(out)
    }

    fn device(&self) -> Device {
        self.device
    }
}
