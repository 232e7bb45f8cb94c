//! Adam over named parameters, with its state as named tensors so a checkpoint can hold it and
//! a resumed run continue exactly where the last one stopped.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use tch::Tensor;

/// Adam (Kingma & Ba), β = (0.9, 0.999), ε = 1e-8, optional decoupled weight decay.
pub struct Adam {
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Steps taken so far.
    pub t: i64,
    /// Per parameter name: first and second moment.
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl Adam {
    pub fn new(learning_rate: f64, weight_decay: f64) -> Adam {
        Adam { learning_rate, weight_decay, t: 0, moments: BTreeMap::new() }
    }

    /// One step on `params` (name, tensor with a gradient); parameters without a gradient are
    /// left alone. Gradients are zeroed afterwards.
    pub fn step(&mut self, params: &[(String, Tensor)]) {
        self.t += 1;
        let (b1, b2) = (0.9f64, 0.999f64);
        let (c1, c2) = (1.0 - b1.powi(self.t as i32), 1.0 - b2.powi(self.t as i32));
        tch::no_grad(|| {
            for (name, p) in params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let (m, v) = self.moments.entry(name.clone()).or_insert_with(|| (p.zeros_like(), p.zeros_like()));
                *m = &*m * b1 + &g * (1.0 - b1);
                *v = &*v * b2 + g.square() * (1.0 - b2);
                let mut update = (&*m / c1) / ((&*v / c2).sqrt() + 1e-8) * self.learning_rate;
                if self.weight_decay > 0.0 {
                    update += p * (self.learning_rate * self.weight_decay);
                }
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&update).expect("in-place parameter update");
                let mut g = g;
                let _ = g.zero_();
            }
        });
    }

    /// The state as named tensors (moments and the step count), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("adam/t".to_owned(), Tensor::from_slice(&[self.t]))];
        for (name, (m, v)) in &self.moments {
            out.push((format!("adam/m/{name}"), m.shallow_clone()));
            out.push((format!("adam/v/{name}"), v.shallow_clone()));
        }
        out
    }

    /// Restores a state written by [`Adam::state`].
    pub fn restore(&mut self, named: &BTreeMap<String, Tensor>) -> Result<()> {
        let Some(t) = named.get("adam/t") else { bail!("the checkpoint holds no optimiser state") };
        self.t = t.int64_value(&[0]);
        self.moments.clear();
        for (key, m) in named.iter().filter_map(|(k, t)| k.strip_prefix("adam/m/").map(|k| (k, t))) {
            let Some(v) = named.get(&format!("adam/v/{key}")) else { bail!("the checkpoint lacks adam/v/{key}") };
            self.moments.insert(key.to_owned(), (m.shallow_clone(), v.shallow_clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn adam_minimises_a_quadratic_and_its_state_resumes_exactly() {
        let run = |steps: usize, resume_at: Option<usize>| {
            let x = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
            let mut adam = Adam::new(0.1, 0.0);
            for s in 0..steps {
                if resume_at == Some(s) {
                    let state: BTreeMap<String, Tensor> = adam.state().into_iter().map(|(k, t)| (k, t.copy())).collect();
                    adam = Adam::new(0.1, 0.0);
                    adam.restore(&state).unwrap();
                }
                x.square().sum(Kind::Float).backward();
                adam.step(&[("x".into(), x.shallow_clone())]);
            }
            x.detach().to_device(Device::Cpu)
        };
        let straight = run(200, None);
        assert!(straight.abs().max().double_value(&[]) < 0.05, "{straight:?}");
        assert!(straight.equal(&run(200, Some(77))), "a restored state continues differently");
    }
}
