//! LPIPS with an AlexNet trunk (Zhang et al. 2018, package `lpips` v0.1): the perceptual
//! distance LowKey's budget uses.
//!
//! The trunk is torchvision's ImageNet AlexNet, whose weights no registry reachable here ships;
//! the five linear layers come from the `lpips` wheel on PyPI. `make lpips ALEXNET=...` converts
//! both into `lpips_alex.safetensors` in the models folder (scripts/convert_lpips.py); without
//! that file LowKey falls back to its documented DSSIM substitute.
//!
//! distance(a, b) = sum over the five ReLU outputs l of mean over positions of
//! w_l . (â_l - b̂_l)², where â is the activation normalised to unit length over channels, on
//! inputs scaled to [-1, 1] then shifted and scaled per channel (lpips' `ScalingLayer`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor, nn, nn::Module};

/// File name in the models folder.
pub const WEIGHTS: &str = "lpips_alex.safetensors";

/// AlexNet's convolutions as torchvision numbers them: (index, in, out, kernel, stride, padding).
const CONVS: [(usize, i64, i64, i64, i64, i64); 5] =
    [(0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1), (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1)];

/// lpips' ScalingLayer: (x - shift) / scale per RGB channel, on x in [-1, 1].
const SHIFT: [f64; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f64; 3] = [0.458, 0.448, 0.450];

#[derive(Debug)]
pub struct LpipsAlex {
    convs: Vec<nn::Conv2D>,
    lins: Vec<Tensor>,
    shift: Tensor,
    scale: Tensor,
    _vs: nn::VarStore,
}

impl LpipsAlex {
    /// Loads the converted weights from `path`, frozen.
    pub fn load(path: &Path, device: Device) -> Result<LpipsAlex> {
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let features = root.sub("features");
        let convs = CONVS
            .iter()
            .map(|&(i, c_in, c_out, k, stride, padding)| {
                nn::conv2d(features.sub(i.to_string()), c_in, c_out, k, nn::ConvConfig { stride, padding, ..Default::default() })
            })
            .collect();
        let lin = root.sub("lin");
        let lins = CONVS.iter().enumerate().map(|(l, c)| lin.var(&l.to_string(), &[1, c.2, 1, 1], nn::Init::Const(0.0))).collect();
        vs.load(path).with_context(|| format!("{}: cannot load LPIPS-AlexNet weights", path.display()))?;
        vs.freeze();
        let per_channel = |v: [f64; 3]| Tensor::from_slice(&v).to_kind(Kind::Float).to_device(device).view([1, 3, 1, 1]);
        Ok(LpipsAlex { convs, lins, shift: per_channel(SHIFT), scale: per_channel(SCALE), _vs: vs })
    }

    /// The installed weights, or None when `make lpips` has not been run.
    pub fn installed(device: Device) -> Result<Option<LpipsAlex>> {
        let path = installed_path();
        if !path.is_file() {
            return Ok(None);
        }
        LpipsAlex::load(&path, device).map(Some)
    }

    /// LPIPS distance between pictures `a` and `b` ([N, 3, H, W], RGB 0..255): [N].
    pub fn distance(&self, a: &Tensor, b: &Tensor) -> Tensor {
        self.distance_to(a, &self.reference(b))
    }

    /// What `distance` needs of the second pictures, for comparing many against the same ones.
    pub fn reference(&self, b: &Tensor) -> Reference {
        Reference(self.activations(b).iter().map(unit_over_channels).collect())
    }

    /// LPIPS distance between pictures `a` and the pictures of `reference`: [N].
    pub fn distance_to(&self, a: &Tensor, reference: &Reference) -> Tensor {
        self.activations(a)
            .iter()
            .zip(&reference.0)
            .zip(&self.lins)
            .map(|((x, y), w)| {
                (unit_over_channels(x) - y).square().conv2d::<&Tensor>(w, None, 1, 0, 1, 1).mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
            })
            .reduce(|total, term| total + term)
            .expect("five layers")
    }

    /// The five ReLU outputs (relu1 .. relu5) on `x` (0..255).
    fn activations(&self, x: &Tensor) -> Vec<Tensor> {
        let mut h = ((x / 127.5 - 1.0) - &self.shift) / &self.scale;
        let mut out = Vec::with_capacity(5);
        for (i, conv) in self.convs.iter().enumerate() {
            if i == 1 || i == 2 {
                // Max-pooling before conv2 and conv3, as in AlexNet's features.2 and features.5.
                h = h.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
            }
            h = conv.forward(&h).relu();
            out.push(h.shallow_clone());
        }
        out
    }
}

/// The unit-normalised activations of reference pictures ([`LpipsAlex::reference`]).
#[derive(Debug)]
pub struct Reference(Vec<Tensor>);

impl Reference {
    /// The reference of some of its pictures (`rows` indexes them).
    pub fn select(&self, rows: &Tensor) -> Reference {
        Reference(self.0.iter().map(|t| t.index_select(0, rows)).collect())
    }
}

/// Where `make lpips` puts the converted weights.
pub fn installed_path() -> PathBuf {
    super::models_dir().join(WEIGHTS)
}

/// lpips' normalize_tensor: x / (||x|| over channels + 1e-10).
fn unit_over_channels(x: &Tensor) -> Tensor {
    x / (x.square().sum_dim_intlist([1i64].as_slice(), true, Kind::Float).sqrt() + 1e-10)
}
