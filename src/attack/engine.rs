//! The one attack loop every cloak method is a configuration of.
//!
//! A batch of pictures (full resolution, any sizes) and their detected faces go in; each face
//! is cropped for each model of the attacker's ensemble with the model's own alignment
//! (a differentiable warp, [`crate::face::align`]), so the perturbation is optimised on the
//! original pixels. Per step:
//!
//! 1. pixels from the variable (`direct`: x = v; `tanh`: x = 255 (tanh(w0 + v) + 1) / 2);
//! 2. the objective per face: feature distance between the crop's embedding and the original
//!    one, pushed away (`away`), pulled toward a target point (`toward`), or away from the
//!    user's own cluster centre (`away_from_centroid`), over the ensemble, optionally with
//!    Gaussian-smoothed copies and flip-averaged embeddings;
//! 3. the budget: DSSIM penalty `c * max(DSSIM - th, 0)^2` on each face's 112x112 crop with
//!    Fawkes' adaptive weight on the feature term, a perceptual penalty (LPIPS-AlexNet, or
//!    DSSIM where its weights are not installed) on the face crop and the whole picture, an
//!    L-inf cap;
//! 4. an optimiser step (Adadelta, Adam or signed gradient), then the L-inf cap and the valid
//!    pixel range;
//! 5. the best iterate per picture that respects the budget is kept.
//!
//! The schedule is fixed (the method's number of steps, as the original tools run it) unless
//! the configuration asks to stop at convergence ([`Convergence`]): then a picture whose kept
//! iterate respects the budget and has gained less than a tolerance over a window of steps
//! stops changing, and the batch ends once all its pictures have. Later steps compute only the
//! pictures still optimised. With `in_flight` set below the number of pictures of similar sizes
//! a call brings, the batch has that many slots and the pictures stream through it: a picture
//! that finishes hands its slot to the next waiting one (fresh optimiser state, learning rate
//! and step count), so the batch stays full while pictures stop at different steps.
//!
//! Memory follows the pixels optimised, so the loop works on each picture's **face region**: the
//! smallest rectangle that holds every pixel any crop of any face samples (with a margin),
//! pasted back at the end. Methods that change only the faces (Fawkes, anti-clustering: their
//! start noise is far below one grey level and every term is on face crops) always work on it:
//! pixels outside it are never changed, and a face's cloak does not depend on the photo around
//! it; LowKey perturbs and measures the whole picture, so it works on
//! the region only when the picture alone is over the pixel budget. Pictures are then grouped by
//! size into batches of at most `max_batch_pixels` (each zero-padded to its largest member; crops
//! only sample their own picture, and the padding is cut off at the end); a single region over
//! the budget is a batch of its own.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::ssim::dssim;
use crate::face::align::{self, Alignment, CropPlan, FaceGeometry};
use crate::models::lpips::{LpipsAlex, Reference};
use crate::models::{FaceModel, l2_normalise};

/// How the optimised variable becomes pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Parameterisation {
    Direct,
    Tanh,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimiser {
    Adadelta {
        lr: f64,
    },
    Adam {
        lr: f64,
    },
    /// x -= step * sign(gradient of the loss), step in 0..255 units.
    Signed {
        step: f64,
    },
}

/// What the feature term wants.
#[derive(Debug)]
pub enum Goal {
    /// Maximise the distance from the face's original embedding (untargeted).
    Away,
    /// Minimise the distance to a target point per face and model ([faces, dim] per model: a
    /// row for each face of every picture given to [`run`], in their order).
    Toward(Vec<Tensor>),
    /// Maximise the distance from the user's clean cluster centre, per model ([dim]).
    AwayFromCentroid(Vec<Tensor>),
}

/// How a feature distance is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distance {
    /// Fawkes: ||f' - f||² / ||f|| on L2-normalised embeddings.
    NormalisedSquared,
    /// Fawkes v0.3's targeted term: ||T - f'|| / ||T|| on L2-normalised embeddings.
    NormalisedL2,
    /// LowKey: mean over dimensions of (f' - f)² / ||f||, on flip-averaged, L2-normalised embeddings.
    MeanSquaredOverNorm,
}

#[derive(Debug)]
pub struct Objective {
    pub goal: Goal,
    pub distance: Distance,
    /// Embed the horizontally flipped crop too and sum (LowKey).
    pub flip: bool,
    /// Add Gaussian-smoothed copies (kernel, sigma) as extra ensemble members (LowKey).
    pub smoothing: Option<(i64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DssimBudget {
    pub threshold: f64,
    /// Weight of the squared excess.
    pub weight: f64,
    /// Fawkes' per-picture weight on the feature term: doubled under 0.9 th, halved over 1.1 th.
    pub adaptive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub dssim: Option<DssimBudget>,
    /// Weight of a perceptual penalty, half on the face crop and half on the whole picture:
    /// LPIPS-AlexNet when [`run`] is given one, else DSSIM.
    pub perceptual: Option<f64>,
    /// Hard cap on |x' - x| per pixel, 0..255 units, applied after every step.
    pub linf: Option<f64>,
    /// Keep the iterate with the largest feature term among those with DSSIM <= this (x th).
    pub best_within: Option<f64>,
}

/// When a picture's optimisation may end before its schedule does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Convergence {
    /// Steps between two checks (each check reads the figures back from the device once).
    pub window: usize,
    /// A picture stops when its kept iterate's feature term gained less than this share over
    /// the last window (and the iterate respects the budget).
    pub tolerance: f64,
}

impl Convergence {
    /// Measured on facescrub12 (README, "Stopping at convergence"): Fawkes high stopped after
    /// 30 of its 150 steps on average (2.23 s/picture instead of 7.40 on 2 cores), with the
    /// protection of the fixed schedule or better.
    pub const DEFAULT: Convergence = Convergence { window: 5, tolerance: 0.02 };
}

#[derive(Debug)]
pub struct AttackConfig {
    pub parameterisation: Parameterisation,
    pub optimiser: Optimiser,
    pub steps: usize,
    /// Stop a picture at convergence rather than after `steps` (which stays the most it gets).
    pub stop: Option<Convergence>,
    /// Multiply the learning rate by `.1` every `.0` steps (Fawkes v0.3).
    pub lr_decay: Option<(usize, f64)>,
    /// Uniform noise of this amplitude added at the start (variable units).
    pub init_noise: f64,
    pub objective: Objective,
    pub budget: Budget,
    pub seed: i64,
    /// Bound on batch x padded height x padded width of one optimised batch.
    pub max_batch_pixels: i64,
    /// Pictures optimised at once (None: every picture of a batch). When a call brings more
    /// pictures of similar sizes than this, they stream through the batch: a picture that
    /// finishes (its schedule run, or converged) makes room for the next waiting one.
    pub in_flight: Option<usize>,
}

/// The default pixel budget of one optimised batch: 4 megapixels (64 LFW pictures, or one
/// 2000 x 2000 face region), a few GB at most on CPU for Fawkes' two-model ensemble.
pub const DEFAULT_MAX_BATCH_PIXELS: i64 = 4_000_000;

/// A model of the attacker's ensemble and the crop it expects.
pub struct Member<'a> {
    pub model: &'a dyn FaceModel,
    pub alignment: Alignment,
}

/// One picture to cloak: pixels [3, H, W] in 0..255 and its faces.
pub struct Target {
    pub pixels: Tensor,
    pub faces: Vec<FaceGeometry>,
}

/// Result per picture: the cloaked pixels [3, H, W] (0..255, not yet rounded) and figures.
pub struct Cloaked {
    pub pixels: Tensor,
    /// Largest DSSIM over the picture's faces (budget crop), at the kept iterate.
    pub dssim: f64,
    /// Feature term at the kept iterate (larger = further for away goals).
    pub feature_term: f64,
    /// Whether the kept iterate respects the DSSIM budget (always true without one).
    pub within_budget: bool,
    /// Optimisation steps this picture took (fewer than the schedule's when it converged).
    pub steps: usize,
}

/// The crop on which DSSIM is measured: Fawkes' 112x112 square around the face, 30 px margin.
const BUDGET_CROP: Alignment = Alignment::SquareBox { size: 112, margin: 30.0 };

/// Runs the attack on a batch of pictures. Pictures without faces come back unchanged, and an
/// empty batch gives an empty result. `lpips` is the perceptual metric of a perceptual budget;
/// without it, DSSIM stands in. Fails when the ensemble is empty or a model refuses its input.
pub fn run(config: &AttackConfig, ensemble: &[Member], lpips: Option<&LpipsAlex>, targets: &[Target], device: Device) -> Result<Vec<Cloaked>> {
    Attack { config, ensemble, lpips, device, narrow: true }.run_timed(targets, &mut Clock::off())
}

/// [`run`] with stopped pictures left in every later step's computation (masked out of the
/// update), as the loop ran before it narrowed batches: tests compare the two.
#[doc(hidden)]
pub fn run_without_narrowing(config: &AttackConfig, ensemble: &[Member], targets: &[Target], device: Device) -> Result<Vec<Cloaked>> {
    Attack { config, ensemble, lpips: None, device, narrow: false }.run_timed(targets, &mut Clock::off())
}

/// [`run`], also saying where the time went: seconds per phase of the step, summed over every
/// step of every batch. The clock waits for the device at each phase's end, which costs a GPU
/// the overlap of one phase with the next: use it to profile, not to cloak.
pub fn run_profiled(
    config: &AttackConfig,
    ensemble: &[Member],
    lpips: Option<&LpipsAlex>,
    targets: &[Target],
    device: Device,
) -> Result<(Vec<Cloaked>, Profile)> {
    let mut clock = Clock::on(device);
    let cloaked = Attack { config, ensemble, lpips, device, narrow: true }.run_timed(targets, &mut clock)?;
    Ok((cloaked, clock.profile.unwrap_or_default()))
}

/// Seconds per phase of the attack step, in the step's order, and the steps they cover.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub phases: Vec<(&'static str, f64)>,
    /// Picture-steps timed (pictures x steps, summed over batches).
    pub picture_steps: usize,
    /// Steps of the optimised batch, each over the pictures then in flight.
    pub batch_steps: usize,
}

impl Profile {
    /// No time yet in any of the step's phases.
    pub fn new() -> Profile {
        Profile { phases: PHASES.iter().map(|&p| (p, 0.0)).collect(), picture_steps: 0, batch_steps: 0 }
    }

    /// Seconds charged to `phase`.
    pub fn seconds(&self, phase: &str) -> f64 {
        self.phases.iter().find(|(name, _)| *name == phase).map_or(0.0, |p| p.1)
    }

    /// Adds `other`'s time and picture-steps to this profile's.
    pub fn add(&mut self, other: &Profile) {
        for (name, seconds) in &mut self.phases {
            *seconds += other.seconds(name);
        }
        self.picture_steps += other.picture_steps;
        self.batch_steps += other.batch_steps;
    }
}

impl Default for Profile {
    fn default() -> Profile {
        Profile::new()
    }
}

/// The phases of one step, as [`Profile`] names them.
pub const PHASES: [&str; 6] = ["crop", "forward", "objective", "backward", "update", "best"];

/// Times the phases of the loop when profiling; does nothing otherwise.
struct Clock {
    device: Device,
    last: std::time::Instant,
    profile: Option<Profile>,
}

impl Clock {
    fn off() -> Clock {
        Clock { device: Device::Cpu, last: std::time::Instant::now(), profile: None }
    }

    fn on(device: Device) -> Clock {
        Clock { device, last: std::time::Instant::now(), profile: Some(Profile::new()) }
    }

    /// Starts timing from now (what came before belongs to no phase).
    fn reset(&mut self) {
        if self.profile.is_some() {
            self.wait_for_device();
            self.last = std::time::Instant::now();
        }
    }

    /// Charges the time since the last lap to `phase`.
    fn lap(&mut self, phase: &'static str) {
        if self.profile.is_none() {
            return;
        }
        self.wait_for_device();
        let now = std::time::Instant::now();
        let seconds = (now - self.last).as_secs_f64();
        self.last = now;
        if let Some(slot) = self.profile.as_mut().and_then(|p| p.phases.iter_mut().find(|(name, _)| *name == phase)) {
            slot.1 += seconds;
        }
    }

    /// Counts a step of `pictures` pictures.
    fn count(&mut self, pictures: usize) {
        if let Some(p) = &mut self.profile {
            p.picture_steps += pictures;
            p.batch_steps += 1;
        }
    }

    /// CUDA runs asynchronously: a phase's time is known only once the device has done its work.
    fn wait_for_device(&self) {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
    }
}

/// What every batch of one [`run`] shares: the settings, the models and the device.
#[derive(Clone, Copy)]
struct Attack<'a> {
    config: &'a AttackConfig,
    ensemble: &'a [Member<'a>],
    lpips: Option<&'a LpipsAlex>,
    device: Device,
    /// Once some pictures of a batch stop, later steps compute only the others.
    narrow: bool,
}

impl Attack<'_> {
    /// [`run`] with a clock, which times the step's phases when on ([`run_profiled`]).
    fn run_timed(&self, targets: &[Target], clock: &mut Clock) -> Result<Vec<Cloaked>> {
        let Attack { config, ensemble, .. } = *self;
        if ensemble.is_empty() {
            bail!("the attack needs at least one model in its ensemble");
        }
        let mut crops: Vec<Alignment> = ensemble.iter().map(|m| m.alignment).collect();
        crops.push(BUDGET_CROP);
        let confined = config.init_noise < 0.5 && config.budget.perceptual.is_none();
        let regions: Vec<Region> = targets.iter().map(|t| Region::to_work_on(t, &crops, confined, config.max_batch_pixels)).collect();
        let views: Vec<Target> = targets.iter().zip(&regions).map(|(t, r)| r.view(t)).collect();
        let mut out: Vec<Option<Cloaked>> = targets.iter().map(|_| None).collect();
        for group in pixel_groups(&views, config.max_batch_pixels, config.in_flight.unwrap_or(usize::MAX)) {
            let batch: Vec<Target> = group.iter().map(|&i| Target { pixels: views[i].pixels.shallow_clone(), faces: views[i].faces.clone() }).collect();
            let points = goal_points(config, targets, &group, self.device)?;
            for (&i, cloaked) in group.iter().zip(self.run_stream(&batch, points, clock)?) {
                out[i] = Some(regions[i].paste(&targets[i], cloaked));
            }
        }
        Ok(out.into_iter().map(|c| c.expect("every picture is in one group")).collect())
    }
}

/// A `toward` goal's points for the faces of one batch (`group`, indices into `targets`), in
/// the batch's order, per model and L2-normalised; empty for the other goals. The goal holds a
/// row per face of every picture the run was given, in their order, and batches regroup them.
fn goal_points(config: &AttackConfig, targets: &[Target], group: &[usize], device: Device) -> Result<Vec<Tensor>> {
    let Goal::Toward(points) = &config.objective.goal else { return Ok(vec![]) };
    let faces: Vec<i64> = targets.iter().map(|t| t.faces.len() as i64).collect();
    let total: i64 = faces.iter().sum();
    if let Some(p) = points.iter().find(|p| p.size().first() != Some(&total)) {
        bail!("the goal has {:?} target points per model for {total} faces", p.size());
    }
    let first: Vec<i64> = faces.iter().scan(0, |next, n| Some(std::mem::replace(next, *next + n))).collect();
    let rows: Vec<i64> = group.iter().flat_map(|&i| first[i]..first[i] + faces[i]).collect();
    let rows = Tensor::from_slice(&rows);
    Ok(points.iter().map(|p| l2_normalise(&p.index_select(0, &rows.to_device(p.device())).to_device(device))).collect())
}

/// The rectangle of a picture the loop optimises: [x0, y0, x1, y1] in whole pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Region([i64; 4]);

impl Region {
    /// The faces' region when the method changes only faces or the picture is over `budget`
    /// pixels; otherwise the whole picture.
    fn to_work_on(target: &Target, crops: &[Alignment], confined: bool, budget: i64) -> Region {
        let [_, h, w] = target.pixels.size()[..] else { unreachable!("pictures are [3, H, W]") };
        let whole = Region([0, 0, w, h]);
        if target.faces.is_empty() || (!confined && h * w <= budget) {
            return whole;
        }
        Region::around_faces(&target.faces, crops, [h, w])
    }

    /// Every pixel a crop of these faces samples, grown by a tenth of its size (and 8 pixels)
    /// for the resampling filter's reach, clipped to the picture.
    fn around_faces(faces: &[FaceGeometry], crops: &[Alignment], [h, w]: [i64; 2]) -> Region {
        let (mut x0, mut y0, mut x1, mut y1) = (f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
        for face in faces {
            for crop in crops {
                let m = crop.output_to_input(face, [h, w]);
                let [oh, ow] = crop.output_size().map(|v| v as f64);
                for corner in [[0.0, 0.0], [ow, 0.0], [0.0, oh], [ow, oh]] {
                    let [x, y] = align::apply(&m, corner);
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                }
            }
        }
        let margin = 8.0 + 0.1 * (x1 - x0).max(y1 - y0);
        let clip = |v: f64, hi: i64| (v as i64).clamp(0, hi);
        Region([clip((x0 - margin).floor(), w), clip((y0 - margin).floor(), h), clip((x1 + margin).ceil(), w), clip((y1 + margin).ceil(), h)])
    }

    /// The region's pixels, with the faces in its coordinates.
    fn view(&self, target: &Target) -> Target {
        let [x0, y0, x1, y1] = self.0;
        let shift = |[x, y]: [f64; 2]| [x - x0 as f64, y - y0 as f64];
        let faces = target
            .faces
            .iter()
            .map(|f| FaceGeometry {
                bbox: [f.bbox[0] - x0 as f64, f.bbox[1] - y0 as f64, f.bbox[2] - x0 as f64, f.bbox[3] - y0 as f64],
                landmarks: f.landmarks.map(shift),
            })
            .collect();
        Target { pixels: target.pixels.narrow(1, y0, y1 - y0).narrow(2, x0, x1 - x0), faces }
    }

    /// The whole picture with the cloaked region in place.
    fn paste(&self, target: &Target, mut cloaked: Cloaked) -> Cloaked {
        let [x0, y0, x1, y1] = self.0;
        let size = target.pixels.size();
        if [x0, y0, x1, y1] != [0, 0, size[2], size[1]] {
            let whole = target.pixels.to_kind(Kind::Float).copy();
            whole.narrow(1, y0, y1 - y0).narrow(2, x0, x1 - x0).copy_(&cloaked.pixels);
            cloaked.pixels = whole;
        }
        cloaked
    }
}

/// Streams of picture indices, similar sizes together, each with at most `budget` pixels in
/// flight once padded (pictures in flight, at most `in_flight`, x largest height x largest
/// width); a picture over the budget goes alone.
fn pixel_groups(targets: &[Target], budget: i64, in_flight: usize) -> Vec<Vec<usize>> {
    let size = |i: usize| {
        let s = targets[i].pixels.size();
        (s[1], s[2])
    };
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(i).0 * size(i).1));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let (mut hmax, mut wmax) = (0, 0);
    for i in order {
        let (h, w) = size(i);
        match groups.last_mut() {
            Some(g) if (g.len() + 1).min(in_flight) as i64 * hmax.max(h) * wmax.max(w) <= budget => {
                g.push(i);
                (hmax, wmax) = (hmax.max(h), wmax.max(w));
            }
            _ => {
                groups.push(vec![i]);
                (hmax, wmax) = (h, w);
            }
        }
    }
    for g in &mut groups {
        g.sort_unstable(); // batch order as given: the same pictures give the same batch
    }
    groups
}

impl<'a> Attack<'a> {
    /// [`run`] on one stream of regions of similar sizes: at most `in_flight` of them are
    /// optimised at once (all of them by default), and each that finishes makes room for the
    /// next. `points` are a `toward` goal's, one row per face of the stream ([`goal_points`]).
    fn run_stream(&self, targets: &[Target], points: Vec<Tensor>, clock: &mut Clock) -> Result<Vec<Cloaked>> {
        let Attack { config, device, .. } = *self;
        if targets.iter().all(|t| t.faces.is_empty()) {
            return Ok(unchanged(targets));
        }
        tch::manual_seed(config.seed);
        let (x0, sizes) = pad_batch(targets, device);
        let faces: Vec<BatchFace> =
            targets.iter().zip(&sizes).enumerate().flat_map(|(b, (t, size))| t.faces.iter().map(move |f| (b as i64, *f, *size))).collect();
        let whole = self.working_set(&faces, &x0, points)?;
        let in_flight = if self.narrow { config.in_flight } else { None }; // refilling needs narrowing
        let mut batch = InFlight::new(config, targets, in_flight, &x0, device);
        let mut out: Vec<Option<Cloaked>> = (0..targets.len()).map(|p| targets[p].faces.is_empty().then(|| unchanged_one(&targets[p]))).collect();
        // The whole stream's working set serves as long as the slots hold pictures 0..n.
        let mut narrowed: Option<Working> = (!batch.holds_all(targets.len())).then(|| whole.narrowed(self, &faces, &batch.members(false), batch.held.len()));
        clock.reset();
        loop {
            let done = batch.progress.done(&batch.best, best_limit(config));
            if !done.is_empty() {
                let refilled: Vec<usize> = done.iter().copied().take(batch.waiting.len()).collect();
                if !refilled.is_empty() {
                    for (p, cloaked) in self.finish(&mut batch, &whole, &faces, &refilled, &sizes)? {
                        out[p] = Some(cloaked);
                    }
                    for &slot in &refilled {
                        batch.enter(slot, &x0);
                    }
                }
                if !batch.progress.any_active() {
                    break;
                }
                if self.narrow {
                    // Later steps cost what the pictures still optimised cost, not the whole batch.
                    narrowed = Some(whole.narrowed(self, &faces, &batch.members(true), batch.held.len()));
                }
            }
            batch.progress.start_step();
            let working = narrowed.as_ref().unwrap_or(&whole);
            clock.count(working.n as usize);
            self.step(&mut batch, working, clock)?;
        }
        // The last iterate of every picture still in a slot counts too (a finished picture's
        // last update has not been looked at since).
        let every_slot: Vec<usize> = (0..batch.held.len()).collect();
        for (p, cloaked) in self.finish(&mut batch, &whole, &faces, &every_slot, &sizes)? {
            out[p] = Some(cloaked);
        }
        Ok(out.into_iter().map(|c| c.expect("every picture of the stream is finished")).collect())
    }

    /// One optimisation step of the pictures in `working`'s slots.
    fn step(&self, batch: &mut InFlight, working: &Working, clock: &mut Clock) -> Result<()> {
        let config = self.config;
        let x = working.select(&batch.state.pixels());
        let picture_weight = working.select(&batch.weight);
        let (feature, picture_dssim, loss) = working.objective(self, &x, &picture_weight, clock)?;
        clock.lap("objective");
        batch.state.backward(&loss);
        clock.lap("backward");
        let taken: Vec<usize> = batch.progress.steps.iter().map(|s| s.saturating_sub(1)).collect();
        batch.state.update(&taken, config, batch.progress.moving.as_ref());
        clock.lap("update");
        tch::no_grad(|| {
            batch.best.record(config, working.rows.as_ref(), &x, &feature, &picture_dssim);
            if let Some(b) = config.budget.dssim.filter(|b| b.adaptive) {
                batch.weight = working.put(&batch.weight, &adapt_weight(&picture_weight, &picture_dssim, b.threshold));
            }
        });
        clock.lap("best");
        Ok(())
    }

    /// The cloaks of the pictures in `slots`, once their last iterate is recorded: (the
    /// stream's picture, its cloak).
    fn finish(&self, batch: &mut InFlight, whole: &Working<'a>, faces: &[BatchFace], slots: &[usize], sizes: &[[i64; 2]]) -> Result<Vec<(usize, Cloaked)>> {
        let config = self.config;
        let members: Vec<(usize, usize)> = slots.iter().map(|&s| (s, batch.held[s])).collect();
        let part = (!batch.holds_all(sizes.len()) || slots.len() < batch.held.len()).then(|| whole.narrowed(self, faces, &members, batch.held.len()));
        let working = part.as_ref().unwrap_or(whole);
        tch::no_grad(|| -> Result<()> {
            let x = working.select(&batch.state.pixels());
            let feature = working.feature(self, &x, &mut Clock::off())?;
            let d = working.dssim(&x);
            batch.best.record(config, working.rows.as_ref(), &x, &feature, &d);
            Ok(())
        })?;
        let (best_feature, best_dssim) = batch.best.figures();
        let limit = best_limit(config);
        Ok(members
            .into_iter()
            .map(|(s, p)| {
                let [h, w] = sizes[p];
                let cloaked = Cloaked {
                    pixels: batch.best.x.get(s as i64).narrow(1, 0, h).narrow(2, 0, w).to_device(Device::Cpu).copy(),
                    dssim: best_dssim[s],
                    feature_term: best_feature[s],
                    within_budget: best_dssim[s] <= limit,
                    steps: batch.progress.steps[s],
                };
                (p, cloaked)
            })
            .collect())
    }

    /// The whole stream's working set: crop plans, and what the originals give once.
    fn working_set(&self, faces: &[BatchFace], x0: &Tensor, points: Vec<Tensor>) -> Result<Working<'a>> {
        let Attack { config, ensemble, lpips, device, .. } = *self;
        let plans: Vec<CropPlan> = ensemble.iter().map(|m| CropPlan::new(m.alignment, faces, &x0.size(), device)).collect();
        let budget_crop = CropPlan::new(BUDGET_CROP, faces, &x0.size(), device);
        let original = tch::no_grad(|| embed_all(config, ensemble, &plans, x0, &mut Clock::off()))?;
        let budget_x0 = tch::no_grad(|| budget_crop.apply(x0));
        // The originals' side of LPIPS does not change between steps: computed once.
        let lpips = lpips.filter(|_| config.budget.perceptual.is_some()).map(|net| tch::no_grad(|| (net, net.reference(&budget_x0), net.reference(x0))));
        let face_picture = Tensor::from_slice(&faces.iter().map(|f| f.0).collect::<Vec<_>>()).to_device(device);
        Ok(Working { rows: None, n: x0.size()[0], face_picture, plans, budget_crop, original, points, budget_x0, x0: x0.shallow_clone(), lpips })
    }
}

/// The optimised batch: a slot per picture in flight with its optimiser state, kept iterate,
/// Fawkes weight and progress, and the stream's pictures still waiting for a slot.
struct InFlight {
    /// The stream's picture each slot holds.
    held: Vec<usize>,
    waiting: std::collections::VecDeque<usize>,
    state: State,
    best: Best,
    /// Fawkes' c_diff per slot.
    weight: Tensor,
    progress: Progress,
}

impl InFlight {
    /// Every picture of the stream in a slot of its own (as a batch always was, faceless ones
    /// included) unless `in_flight` is fewer: then the first that many pictures with faces.
    fn new(config: &AttackConfig, targets: &[Target], in_flight: Option<usize>, x0: &Tensor, device: Device) -> InFlight {
        let n = targets.len();
        let with_faces: Vec<usize> = (0..n).filter(|&p| !targets[p].faces.is_empty()).collect();
        let (held, waiting): (Vec<usize>, Vec<usize>) = match in_flight {
            Some(k) if k < with_faces.len() => (with_faces[..k.max(1)].to_vec(), with_faces[k.max(1)..].to_vec()),
            Some(k) if k < n => (with_faces, vec![]),
            _ => ((0..n).collect(), vec![]),
        };
        let x0_held = if held.len() == n { x0.shallow_clone() } else { x0.index_select(0, &picture_index(&held, device)) };
        let holds_faces = held.iter().map(|&p| !targets[p].faces.is_empty()).collect();
        InFlight {
            state: State::new(config, &x0_held, device),
            best: Best::new(&x0_held),
            weight: Tensor::ones([held.len() as i64], (Kind::Float, device)),
            progress: Progress::new(holds_faces, config, device),
            held,
            waiting: waiting.into(),
        }
    }

    /// Whether slot k holds picture k for every picture of an `n`-picture stream.
    fn holds_all(&self, n: usize) -> bool {
        self.held.len() == n && self.held.iter().enumerate().all(|(s, &p)| s == p)
    }

    /// (slot, picture) of every slot, or of the slots still optimised.
    fn members(&self, active_only: bool) -> Vec<(usize, usize)> {
        self.held.iter().copied().enumerate().filter(|&(s, _)| !active_only || self.progress.active[s]).collect()
    }

    /// Puts the next waiting picture into `slot`, from its original pixels (`x0`, the stream's).
    fn enter(&mut self, slot: usize, x0: &Tensor) {
        let picture = self.waiting.pop_front().expect("a waiting picture");
        let device = x0.device();
        let original = x0.index_select(0, &picture_index(&[picture], device));
        let rows = picture_index(&[slot], device);
        self.state.enter(slot, &rows, &original);
        self.best.enter(&rows, &original);
        self.weight = self.weight.index_fill(0, &rows, 1.0);
        self.progress.enter(slot);
        self.held[slot] = picture;
    }
}

fn picture_index(pictures: &[usize], device: Device) -> Tensor {
    Tensor::from_slice(&pictures.iter().map(|&p| p as i64).collect::<Vec<_>>()).to_device(device)
}

/// A face of a stream: its picture's index in the stream, its geometry, that picture's [h, w].
type BatchFace = (i64, FaceGeometry, [i64; 2]);

/// What a step computes on: some pictures of a stream (all of them at first, those in flight
/// once some have finished or the stream is larger than the batch), their faces, and what was
/// computed once of their originals, indexed rather than recomputed when the set changes.
struct Working<'a> {
    /// The batch's slots of the pictures in the set, in the set's order; None when the set is
    /// every slot, in order.
    rows: Option<Tensor>,
    n: i64,
    /// Per face, its picture's position in the set.
    face_picture: Tensor,
    plans: Vec<CropPlan>,
    budget_crop: CropPlan,
    /// Per ensemble member (and smoothed copy), the original faces' embeddings.
    original: Vec<Tensor>,
    /// Per model, a `toward` goal's point for each face of the set (empty for other goals).
    points: Vec<Tensor>,
    budget_x0: Tensor,
    x0: Tensor,
    /// The network and the original face crops' and pictures' LPIPS sides.
    lpips: Option<(&'a LpipsAlex, Reference, Reference)>,
}

impl<'a> Working<'a> {
    /// The set of `members` ((slot, the stream's picture), slots in order) of a batch of
    /// `slots` slots, from the whole stream's set.
    fn narrowed(&self, attack: &Attack<'a>, faces: &[BatchFace], members: &[(usize, usize)], slots: usize) -> Working<'a> {
        let device = attack.device;
        let position: std::collections::HashMap<i64, i64> = members.iter().enumerate().map(|(i, &(_, p))| (p as i64, i as i64)).collect();
        let (face_rows, kept): (Vec<i64>, Vec<BatchFace>) =
            faces.iter().enumerate().filter_map(|(i, &(b, f, size))| position.get(&b).map(|&p| (i as i64, (p, f, size)))).unzip();
        let pictures = picture_index(&members.iter().map(|m| m.1).collect::<Vec<_>>(), device);
        let face_rows = Tensor::from_slice(&face_rows).to_device(device);
        let mut size = self.x0.size();
        size[0] = members.len() as i64;
        let every_slot = members.len() == slots;
        Working {
            n: size[0],
            face_picture: Tensor::from_slice(&kept.iter().map(|f| f.0).collect::<Vec<_>>()).to_device(device),
            plans: attack.ensemble.iter().map(|m| CropPlan::new(m.alignment, &kept, &size, device)).collect(),
            budget_crop: CropPlan::new(BUDGET_CROP, &kept, &size, device),
            original: self.original.iter().map(|e| e.index_select(0, &face_rows)).collect(),
            points: self.points.iter().map(|p| p.index_select(0, &face_rows)).collect(),
            budget_x0: self.budget_x0.index_select(0, &face_rows),
            x0: self.x0.index_select(0, &pictures),
            lpips: self.lpips.as_ref().map(|(net, faces, whole)| (*net, faces.select(&face_rows), whole.select(&pictures))),
            rows: (!every_slot).then(|| picture_index(&members.iter().map(|m| m.0).collect::<Vec<_>>(), device)),
        }
    }

    /// The set's rows of a per-slot tensor of the batch.
    fn select(&self, whole: &Tensor) -> Tensor {
        self.rows.as_ref().map_or_else(|| whole.shallow_clone(), |r| whole.index_select(0, r))
    }

    /// `whole` (per slot) with the set's rows replaced by `part`.
    fn put(&self, whole: &Tensor, part: &Tensor) -> Tensor {
        self.rows.as_ref().map_or_else(|| part.shallow_clone(), |r| whole.index_copy(0, r, part))
    }

    /// Per picture of the set: the feature term over its faces.
    fn feature(&self, attack: &Attack, x: &Tensor, clock: &mut Clock) -> Result<Tensor> {
        let embeddings = embed_all(attack.config, attack.ensemble, &self.plans, x, clock)?;
        Ok(per_picture(&feature_term(attack.config, &embeddings, &self.original, &self.points), &self.face_picture, self.n, false))
    }

    /// Per picture of the set: the largest DSSIM of its faces' budget crops.
    fn dssim(&self, x: &Tensor) -> Tensor {
        per_picture(&dssim(&self.budget_crop.apply(x), &self.budget_x0, 255.0), &self.face_picture, self.n, true)
    }

    /// The feature term and DSSIM per picture of the set, and the loss the step descends.
    fn objective(&self, attack: &Attack, x: &Tensor, weight: &Tensor, clock: &mut Clock) -> Result<(Tensor, Tensor, Tensor)> {
        let config = attack.config;
        let feature = self.feature(attack, x, clock)?;
        let face_crops = self.budget_crop.apply(x);
        let picture_dssim = per_picture(&dssim(&face_crops, &self.budget_x0, 255.0), &self.face_picture, self.n, true);
        let mut loss = -(weight * &feature).sum(Kind::Float);
        if let Some(b) = config.budget.dssim {
            loss += (&picture_dssim - b.threshold).clamp_min(0.0).square().sum(Kind::Float) * b.weight;
        }
        if let Some(w) = config.budget.perceptual {
            let (face, whole) = match &self.lpips {
                Some((net, face_x0, whole_x0)) => {
                    (per_picture(&net.distance_to(&face_crops, face_x0), &self.face_picture, self.n, true), net.distance_to(x, whole_x0))
                }
                None => (picture_dssim.shallow_clone(), dssim(x, &self.x0, 255.0)),
            };
            loss += ((face + whole) * (0.5 * w)).sum(Kind::Float);
        }
        Ok((feature, picture_dssim, loss))
    }
}

fn unchanged(targets: &[Target]) -> Vec<Cloaked> {
    targets.iter().map(unchanged_one).collect()
}

fn unchanged_one(target: &Target) -> Cloaked {
    Cloaked { pixels: target.pixels.shallow_clone(), dssim: 0.0, feature_term: 0.0, within_budget: true, steps: 0 }
}

/// The DSSIM an iterate may reach and still count as within budget (infinite without one).
fn best_limit(config: &AttackConfig) -> f64 {
    match (config.budget.dssim, config.budget.best_within) {
        (Some(b), Some(k)) => b.threshold * k,
        _ => f64::INFINITY,
    }
}

/// Which slots of a batch are still optimised, and how many steps each slot's picture took.
struct Progress {
    stop: Option<Convergence>,
    /// The schedule's steps: the most a picture gets.
    schedule: usize,
    /// Slots whose picture is still optimised (faceless pictures never are).
    active: Vec<bool>,
    /// [B, 1, 1, 1] boolean mask of the slots still optimised, once the set has changed.
    moving: Option<Tensor>,
    /// Kept feature term per slot at its picture's last check.
    at_check: Vec<f64>,
    /// Steps taken by each slot's picture.
    steps: Vec<usize>,
    /// Whether the set of active slots changed since the last step.
    changed: bool,
    device: Device,
}

impl Progress {
    fn new(holds_faces: Vec<bool>, config: &AttackConfig, device: Device) -> Progress {
        let n = holds_faces.len();
        Progress {
            stop: config.stop,
            schedule: config.steps,
            active: holds_faces,
            moving: None,
            at_check: vec![f64::NAN; n],
            steps: vec![0; n],
            changed: false,
            device,
        }
    }

    /// Before a step: the slots whose picture is done, its schedule run or converged (checked
    /// at the end of each of its windows: kept iterate within `limit` and gaining less than
    /// the tolerance since its last check). They are no longer active.
    fn done(&mut self, best: &Best, limit: f64) -> Vec<usize> {
        let mut done: Vec<usize> = (0..self.active.len()).filter(|&s| self.active[s] && self.steps[s] >= self.schedule).collect();
        if let Some(c) = self.stop {
            let window = c.window.max(1);
            let due: Vec<usize> = (0..self.active.len())
                .filter(|&s| self.active[s] && self.steps[s] > 0 && self.steps[s] < self.schedule && self.steps[s].is_multiple_of(window))
                .collect();
            if !due.is_empty() {
                let (feature, dssim) = best.figures();
                for s in due {
                    let gain = (feature[s] - self.at_check[s]) / self.at_check[s].abs().max(1e-12);
                    if dssim[s] <= limit && gain < c.tolerance {
                        done.push(s);
                    }
                    self.at_check[s] = feature[s];
                }
            }
        }
        done.sort_unstable();
        for &s in &done {
            self.active[s] = false;
        }
        self.changed |= !done.is_empty();
        done
    }

    /// A new picture in `slot`, from its first step.
    fn enter(&mut self, slot: usize) {
        (self.active[slot], self.steps[slot], self.at_check[slot]) = (true, 0, f64::NAN);
        self.changed = true;
    }

    fn any_active(&self) -> bool {
        self.active.iter().any(|&a| a)
    }

    /// Counts the step about to run for every active slot.
    fn start_step(&mut self) {
        if std::mem::take(&mut self.changed) {
            self.moving = Some(Tensor::from_slice(&self.active).view([-1, 1, 1, 1]).to_device(self.device));
        }
        for (s, _) in self.steps.iter_mut().zip(&self.active).filter(|(_, a)| **a) {
            *s += 1;
        }
    }
}

/// Stacks pictures of any sizes into one zero-padded [B, 3, Hmax, Wmax] batch.
fn pad_batch(targets: &[Target], device: Device) -> (Tensor, Vec<[i64; 2]>) {
    let sizes: Vec<[i64; 2]> = targets.iter().map(|t| [t.pixels.size()[1], t.pixels.size()[2]]).collect();
    let hmax = sizes.iter().map(|s| s[0]).max().unwrap_or(1);
    let wmax = sizes.iter().map(|s| s[1]).max().unwrap_or(1);
    let padded: Vec<Tensor> =
        targets.iter().zip(&sizes).map(|(t, s)| t.pixels.to_kind(Kind::Float).constant_pad_nd([0, wmax - s[1], 0, hmax - s[0]])).collect();
    (Tensor::stack(&padded, 0).to_device(device), sizes)
}

/// Embeddings of every face for every ensemble member (and smoothed copies): one tensor per
/// member. `plans` crop the faces the way each member wants them.
fn embed_all(config: &AttackConfig, ensemble: &[Member], plans: &[CropPlan], x: &Tensor, clock: &mut Clock) -> Result<Vec<Tensor>> {
    let objective = &config.objective;
    let mut out = Vec::new();
    for (member, plan) in ensemble.iter().zip(plans) {
        let face_crops = plan.apply(x);
        let mut views = vec![face_crops.shallow_clone()];
        if let Some((kernel, sigma)) = objective.smoothing {
            views.push(gaussian_blur(&face_crops, kernel, sigma));
        }
        clock.lap("crop");
        for view in views {
            let e = member.model.embed(&view)?;
            let e = if objective.flip { e + member.model.embed(&view.flip([3]))? } else { e };
            out.push(l2_normalise(&e));
        }
        clock.lap("forward");
    }
    Ok(out)
}

/// Per-face feature term, larger = better for the attacker (summed over members): [faces].
/// `points` are a `toward` goal's, per model, one normalised row per face.
fn feature_term(config: &AttackConfig, embeddings: &[Tensor], original: &[Tensor], points: &[Tensor]) -> Tensor {
    let mut total: Option<Tensor> = None;
    for (m, (e, e0)) in embeddings.iter().zip(original).enumerate() {
        let term = match (&config.objective.goal, config.objective.distance) {
            (Goal::Toward(_), _) => {
                // Targets are given per model; smoothed copies share their model's target.
                let t = &points[m / members_per_model(config)];
                -((t - e).norm_scalaropt_dim(2, [1i64].as_slice(), false) / t.norm_scalaropt_dim(2, [1i64].as_slice(), false))
            }
            (Goal::AwayFromCentroid(centres), _) => {
                let c = l2_normalise(&centres[m / members_per_model(config)].to_device(e.device()).view([1, -1]));
                (e - &c).square().sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            }
            (Goal::Away, Distance::MeanSquaredOverNorm) => {
                (e - e0).square().mean_dim([1i64].as_slice(), false, Kind::Float) / e0.norm_scalaropt_dim(2, [1i64].as_slice(), false)
            }
            (Goal::Away, _) => (e - e0).square().sum_dim_intlist([1i64].as_slice(), false, Kind::Float) / e0.norm_scalaropt_dim(2, [1i64].as_slice(), false),
        };
        total = Some(match total {
            Some(t) => t + term,
            None => term,
        });
    }
    total.expect("a non-empty ensemble")
}

fn members_per_model(config: &AttackConfig) -> usize {
    1 + config.objective.smoothing.is_some() as usize
}

/// Sums (or takes the max of) per-face values into per-picture values: [pictures].
fn per_picture(values: &Tensor, face_picture: &Tensor, n: i64, max: bool) -> Tensor {
    if !max {
        return Tensor::zeros([n], (values.kind(), values.device())).index_add(0, face_picture, values);
    }
    // membership [pictures, faces]: the max over each picture's own faces (values are >= 0).
    let pictures = Tensor::arange(n, (tch::Kind::Int64, values.device())).unsqueeze(1);
    let member = pictures.eq_tensor(&face_picture.unsqueeze(0)).to_kind(values.kind());
    (values.unsqueeze(0) * &member + (member - 1.0) * 1e9).amax([1i64].as_slice(), false).clamp_min(0.0)
}

/// Fawkes' adaptive weight: x2 under 0.9 th (cap 256), /2 over 1.1 th (floor 1/256), else 1.
fn adapt_weight(weight: &Tensor, d: &Tensor, threshold: f64) -> Tensor {
    let low = d.le(0.9 * threshold);
    let high = d.ge(1.1 * threshold);
    let ones = weight.ones_like();
    (weight * 2.0).clamp_max(256.0).where_self(&low, &(weight / 2.0).clamp_min(1.0 / 256.0).where_self(&high, &ones))
}

/// The best iterate so far, per picture, kept on the device: comparing there (rather than
/// reading the figures back every step) lets a GPU run the whole schedule without waiting.
struct Best {
    x: Tensor,
    feature: Tensor,
    dssim: Tensor,
}

impl Best {
    fn new(x0: &Tensor) -> Best {
        let n = x0.size()[0];
        let opts = (Kind::Float, x0.device());
        // A deep copy: the originals must never be aliased by what replaces them.
        Best { x: x0.copy(), feature: Tensor::full([n], f64::NEG_INFINITY, opts), dssim: Tensor::full([n], f64::INFINITY, opts) }
    }

    /// Keeps, per picture, the iterate with the largest feature term among those within budget
    /// (any iterate within budget beats one outside it). `x`, `feature` and `d` are of the
    /// batch's pictures `at` (all when None).
    fn record(&mut self, config: &AttackConfig, at: Option<&Tensor>, x: &Tensor, feature: &Tensor, d: &Tensor) {
        let limit = best_limit(config);
        let (feature, d) = (feature.detach().to_kind(Kind::Float), d.detach().to_kind(Kind::Float));
        let rows = |t: &Tensor| at.map_or_else(|| t.shallow_clone(), |i| t.index_select(0, i));
        let (kept_x, kept_feature, kept_dssim) = (rows(&self.x), rows(&self.feature), rows(&self.dssim));
        let within = d.le(limit);
        let best_within = kept_dssim.le(limit);
        let better = within
            .logical_and(&best_within.logical_not())
            .logical_or(&within.eq_tensor(&best_within).logical_and(&feature.gt_tensor(&kept_feature)))
            .logical_or(&kept_feature.isneginf());
        let put = |whole: &Tensor, part: Tensor| at.map_or(part.shallow_clone(), |i| whole.index_copy(0, i, &part));
        self.x = put(&self.x, x.detach().where_self(&better.view([-1, 1, 1, 1]), &kept_x));
        self.feature = put(&self.feature, feature.where_self(&better, &kept_feature));
        self.dssim = put(&self.dssim, d.where_self(&better, &kept_dssim));
    }

    /// Forgets slot `rows`' kept iterate: a new picture, `original`, starts there.
    fn enter(&mut self, rows: &Tensor, original: &Tensor) {
        self.x = self.x.index_copy(0, rows, original);
        self.feature = self.feature.index_fill(0, rows, f64::NEG_INFINITY);
        self.dssim = self.dssim.index_fill(0, rows, f64::INFINITY);
    }

    fn figures(&self) -> (Vec<f64>, Vec<f64>) {
        let read = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu)).expect("f64");
        (read(&self.feature), read(&self.dssim))
    }
}

fn gaussian_blur(x: &Tensor, kernel: i64, sigma: f64) -> Tensor {
    let taps: Vec<f32> = (0..kernel).map(|i| (-((i - kernel / 2) as f64).powi(2) / (2.0 * sigma * sigma)).exp() as f32).collect();
    let g = Tensor::from_slice(&taps).to_device(x.device());
    let g = &g / g.sum(Kind::Float);
    let c = x.size()[1];
    let pad = kernel / 2;
    let padded = x.reflection_pad2d([pad, pad, pad, pad]);
    padded.conv2d(&g.view([1, 1, 1, kernel]).expand([c, 1, 1, kernel], false), None::<Tensor>, [1, 1], [0, 0], [1, 1], c).conv2d(
        &g.view([1, 1, kernel, 1]).expand([c, 1, kernel, 1], false),
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        c,
    )
}

/// The optimised variable and the optimiser's memory, a row per slot.
struct State {
    variable: Tensor,
    x0: Tensor,
    /// tanh parameterisation: atanh of the original, so x = 255 (tanh(w0 + v) + 1) / 2.
    w0: Option<Tensor>,
    moments: (Tensor, Tensor),
    /// Per slot: the learning rate's decay so far.
    lr_scale: Vec<f64>,
    init_noise: f64,
    parameterisation: Parameterisation,
}

impl State {
    fn new(config: &AttackConfig, x0: &Tensor, _device: Device) -> State {
        let (variable, w0) = State::start(config.parameterisation, config.init_noise, x0);
        State {
            variable: variable.set_requires_grad(true),
            x0: x0.shallow_clone(),
            w0,
            moments: (x0.zeros_like(), x0.zeros_like()),
            lr_scale: vec![1.0; x0.size()[0] as usize],
            init_noise: config.init_noise,
            parameterisation: config.parameterisation,
        }
    }

    /// The variable's start (the original plus uniform noise) and, for tanh, w0.
    fn start(parameterisation: Parameterisation, init_noise: f64, x0: &Tensor) -> (Tensor, Option<Tensor>) {
        let noise = (x0.rand_like() * 2.0 - 1.0) * init_noise;
        match parameterisation {
            Parameterisation::Direct => ((x0 + noise).clamp(0.0, 255.0), None),
            Parameterisation::Tanh => (noise, Some((x0 / 127.5 - 1.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6).atanh())),
        }
    }

    /// Starts the picture `original` ([1, 3, H, W]) afresh in `slot` (`rows`: [slot] on the device).
    fn enter(&mut self, slot: usize, rows: &Tensor, original: &Tensor) {
        let (variable, w0) = State::start(self.parameterisation, self.init_noise, original);
        tch::no_grad(|| {
            let _ = self.variable.index_copy_(0, rows, &variable);
        });
        self.x0 = self.x0.index_copy(0, rows, original);
        if let (Some(all), Some(one)) = (&self.w0, &w0) {
            self.w0 = Some(all.index_copy(0, rows, one));
        }
        let zero = original.zeros_like();
        self.moments = (self.moments.0.index_copy(0, rows, &zero), self.moments.1.index_copy(0, rows, &zero));
        self.lr_scale[slot] = 1.0;
    }

    fn pixels(&self) -> Tensor {
        match &self.w0 {
            None => self.variable.shallow_clone(),
            Some(w0) => ((w0 + &self.variable).tanh() + 1.0) * 127.5,
        }
    }

    /// The gradient of `loss` with respect to the variable.
    fn backward(&mut self, loss: &Tensor) {
        self.variable.zero_grad();
        loss.backward();
    }

    /// One optimiser step on the gradient, then the L-inf cap and the valid range; `taken`
    /// holds each slot's steps before this one; slots outside `moving` (a [B, 1, 1, 1] mask,
    /// when given) keep their pixels.
    fn update(&mut self, taken: &[usize], config: &AttackConfig, moving: Option<&Tensor>) {
        if let Some((every, factor)) = config.lr_decay {
            for (scale, &step) in self.lr_scale.iter_mut().zip(taken) {
                if step > 0 && step.is_multiple_of(every) {
                    *scale *= factor;
                }
            }
        }
        let device = self.variable.device();
        tch::no_grad(|| {
            let g = self.variable.grad();
            let update = match config.optimiser {
                Optimiser::Signed { step } => g.sign() * step,
                Optimiser::Adadelta { lr } => {
                    // TensorFlow's Adadelta (rho 0.95, epsilon 1e-7), as Fawkes uses.
                    let (acc_g, acc_d) = &mut self.moments;
                    *acc_g = &*acc_g * 0.95 + g.square() * 0.05;
                    let delta = ((&*acc_d + 1e-7).sqrt() / (&*acc_g + 1e-7).sqrt()) * &g;
                    *acc_d = &*acc_d * 0.95 + delta.square() * 0.05;
                    PerSlot::of(self.lr_scale.iter().map(|s| lr * s), device).times(&delta)
                }
                Optimiser::Adam { lr } => {
                    let (m, v) = &mut self.moments;
                    *m = &*m * 0.9 + &g * 0.1;
                    *v = &*v * 0.999 + g.square() * 0.001;
                    let t = |step: usize| (step + 1) as f64;
                    let m_hat = PerSlot::of(taken.iter().map(|&s| 1.0 - 0.9f64.powf(t(s))), device).divides(m);
                    let v_hat = PerSlot::of(taken.iter().map(|&s| 1.0 - 0.999f64.powf(t(s))), device).divides(v);
                    PerSlot::of(self.lr_scale.iter().map(|s| lr * s), device).times(&(m_hat / (v_hat.sqrt() + 1e-8)))
                }
            };
            let before = moving.map(|_| self.variable.detach().copy());
            let _ = self.variable.f_sub_(&update).expect("in-place update");
            self.project(config.budget.linf);
            if let (Some(mask), Some(before)) = (moving, before) {
                // Stopped pictures keep their variable exactly (no rounding through tanh).
                let kept = self.variable.detach().where_self(mask, &before);
                self.variable.f_copy_(&kept).expect("in-place copy");
            }
        });
    }

    /// Applies the L-inf cap and the 0..255 range, in pixel space, back onto the variable.
    fn project(&mut self, linf: Option<f64>) {
        let mut x = self.pixels().detach();
        if let Some(eps) = linf {
            x = &self.x0 + (&x - &self.x0).clamp(-eps, eps);
        }
        x = x.clamp(0.0, 255.0);
        let new = match &self.w0 {
            None => x,
            Some(w0) => (&x / 127.5 - 1.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6).atanh() - w0,
        };
        self.variable.f_copy_(&new).expect("in-place copy");
    }
}

/// A factor per slot: one number when every slot has the same (a batch whose pictures all
/// started together), else a [B, 1, 1, 1] tensor.
enum PerSlot {
    Same(f64),
    Each(Tensor),
}

impl PerSlot {
    fn of(values: impl Iterator<Item = f64>, device: Device) -> PerSlot {
        let values: Vec<f64> = values.collect();
        match values.first() {
            Some(&v) if values.iter().all(|&w| w == v) => PerSlot::Same(v),
            _ => PerSlot::Each(Tensor::from_slice(&values).to_kind(Kind::Float).view([-1, 1, 1, 1]).to_device(device)),
        }
    }

    fn times(&self, t: &Tensor) -> Tensor {
        match self {
            PerSlot::Same(v) => t * *v,
            PerSlot::Each(v) => t * v,
        }
    }

    /// `t` divided by the factor.
    fn divides(&self, t: &Tensor) -> Tensor {
        match self {
            PerSlot::Same(v) => t / *v,
            PerSlot::Each(v) => t / v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(h: i64, w: i64) -> Target {
        Target { pixels: Tensor::zeros([3, h, w], (Kind::Float, Device::Cpu)), faces: vec![] }
    }

    #[test]
    fn batches_keep_within_the_pixel_budget_and_group_similar_sizes() {
        let pictures = [picture(250, 250), picture(4000, 3000), picture(250, 250), picture(300, 200), picture(250, 250)];
        let groups = pixel_groups(&pictures, 200_000, usize::MAX);
        // The large one alone; the three 250 x 250 together (187,500 pixels); a fourth, padded
        // to 300 x 250, would make 300,000.
        assert_eq!(groups, vec![vec![1], vec![0, 2, 4], vec![3]]);
        let groups = pixel_groups(&pictures[..], 1_000_000_000, usize::MAX);
        assert_eq!(groups, vec![vec![0, 1, 2, 3, 4]]);
        let mut all: Vec<usize> = pixel_groups(&pictures, 1, usize::MAX).concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4], "every picture in exactly one batch");
    }
}
