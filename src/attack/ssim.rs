//! Structural similarity, differentiable, as Fawkes measures its budget.
//!
//! `tf.image.ssim` semantics: 11x11 Gaussian window (sigma 1.5), constants k1 = 0.01 and
//! k2 = 0.03 on the dynamic range `max_val`, "valid" filtering (no padding), SSIM averaged over
//! channels and positions. DSSIM = (1 - SSIM) / 2.

use tch::{Kind, Tensor};

/// A normalised 1-D Gaussian of `size` taps.
fn gaussian(size: i64, sigma: f64, device: tch::Device) -> Tensor {
    let taps: Vec<f32> = (0..size)
        .map(|i| {
            let x = i as f64 - (size - 1) as f64 / 2.0;
            (-(x * x) / (2.0 * sigma * sigma)).exp() as f32
        })
        .collect();
    let g = Tensor::from_slice(&taps).to_device(device);
    &g / g.sum(Kind::Float)
}

/// Separable Gaussian filter of each channel, no padding.
fn blur(x: &Tensor, window: &Tensor) -> Tensor {
    let c = x.size()[1];
    let k = window.size()[0];
    let horizontal = window.view([1, 1, 1, k]).expand([c, 1, 1, k], false);
    let vertical = window.view([1, 1, k, 1]).expand([c, 1, k, 1], false);
    x.conv2d(&horizontal, None::<Tensor>, [1, 1], [0, 0], [1, 1], c).conv2d(&vertical, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
}

/// SSIM of each image pair in `a` and `b` ([N, C, H, W], values on a `max_val` scale): [N].
pub fn ssim(a: &Tensor, b: &Tensor, max_val: f64) -> Tensor {
    let window = gaussian(11, 1.5, a.device());
    let (c1, c2) = ((0.01 * max_val).powi(2), (0.03 * max_val).powi(2));
    let (mu_a, mu_b) = (blur(a, &window), blur(b, &window));
    let (mu_aa, mu_bb, mu_ab) = (&mu_a * &mu_a, &mu_b * &mu_b, &mu_a * &mu_b);
    let var_a = blur(&(a * a), &window) - &mu_aa;
    let var_b = blur(&(b * b), &window) - &mu_bb;
    let cov = blur(&(a * b), &window) - &mu_ab;
    let luminance = (&mu_ab * 2.0 + c1) / (mu_aa + mu_bb + c1);
    let structure = (cov * 2.0 + c2) / (var_a + var_b + c2);
    (luminance * structure).mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
}

/// DSSIM = (1 - SSIM) / 2, per image pair: [N].
pub fn dssim(a: &Tensor, b: &Tensor, max_val: f64) -> Tensor {
    (1.0 - ssim(a, b, max_val)) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn identical_images_have_ssim_one() {
        let x = Tensor::rand([2, 3, 40, 40], (Kind::Float, Device::Cpu)) * 255.0;
        let s = ssim(&x, &x, 255.0);
        assert!((s - 1.0).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn dssim_grows_with_noise_and_has_gradients() {
        tch::manual_seed(1);
        let x = Tensor::rand([1, 3, 64, 64], (Kind::Float, Device::Cpu)) * 255.0;
        let small = &x + Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0;
        let large = (&x + Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu)) * 20.0).set_requires_grad(true);
        let (d_small, d_large) = (dssim(&small, &x, 255.0).double_value(&[0]), dssim(&large, &x, 255.0));
        assert!(d_small > 0.0 && d_small < d_large.double_value(&[0]));
        d_large.sum(Kind::Float).backward();
        assert!(large.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    /// Values computed with tf.image.ssim semantics by hand on a tiny case: a constant shift
    /// by d of a constant image only changes luminance: SSIM = (2 m (m + d) + c1) / (m^2 + (m + d)^2 + c1).
    #[test]
    fn a_constant_shift_matches_the_closed_form() {
        let a = Tensor::full([1, 1, 16, 16], 100.0, (Kind::Float, Device::Cpu));
        let b = &a + 20.0;
        let c1 = (0.01f64 * 255.0).powi(2);
        let want = (2.0 * 100.0 * 120.0 + c1) / (100.0f64.powi(2) + 120.0f64.powi(2) + c1);
        let got = ssim(&a, &b, 255.0).double_value(&[0]);
        // float32 variances (E[x²] - E[x]²) cancel catastrophically at this brightness, as in TF.
        assert!((got - want).abs() < 2e-4, "{got} vs {want}");
    }
}
