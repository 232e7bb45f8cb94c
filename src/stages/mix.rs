//! The `mix` stage: the cloak fraction. Of each protected user's training pictures, a share
//! `fraction` is what the trainer scrapes cloaked; the rest leaked clean. The shares are nested
//! (the pictures cloaked at 0.25 are among those cloaked at 0.5), drawn per user with the seed,
//! so protection can be compared across fractions. Every other picture is scraped as it is in
//! the dataset (the public identities' cloaked copies are the adaptive trainer's own material,
//! not the web's).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pipeline::{Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::rng::Rng;
use crate::tables::images::{self, CLOAKED, ImageRow};
use crate::tables::splits::{self, SPLITS, Side, Splits};

pub const KIND: Kind = Kind {
    name: "mix",
    source: file!(),
    summary: "the cloak fraction: a share of each protected user's training pictures cloaked, the rest leaked clean",
    inputs: &[Slot::new("images", images::ANY), Slot::new("cloaked_images", &[CLOAKED]), Slot::new("splits", &[SPLITS])],
    optional_inputs: &[],
    outputs: &[Slot::new("scraped_images", &[CLOAKED])],
    labels: &["fraction"],
    scope: Scope::Dataset,
    plan: plan_from::<Mix>,
};

/// Configuration of the `mix` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Share of each protected user's training pictures scraped cloaked, within 0..1.
    pub fraction: f64,
    #[serde(default)]
    pub seed: u64,
}

impl StageConfig for Mix {
    fn validate(&self) -> Result<(), String> {
        check(
            (0.0..=1.0).contains(&self.fraction),
            "fraction",
            self.fraction,
            "within 0..1 (the share of a protected user's training pictures that are cloaked)",
        )
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let clean = images::read(&ctx.read("images")?)?;
        let cloaked = images::read(&ctx.read("cloaked_images")?)?;
        let splits = splits::read(&ctx.read("splits")?)?;
        let replaced = images::replaced(&clean, &cloaked);
        let keep = self.kept_cloaked(&cloaked, &replaced, &splits);
        let by_id: HashMap<&str, &ImageRow> = cloaked.iter().map(|r| (r.image_id.as_str(), r)).collect();
        let rows: Vec<ImageRow> = clean.iter().map(|r| if keep.contains(&r.image_id) { by_id[r.image_id.as_str()].clone() } else { r.clone() }).collect();
        let offered = cloaked.iter().filter(|r| is_cloaked_training(r, &replaced, &splits)).count();
        ctx.report.push(format!("mix: fraction {}: {} of {offered} protected training pictures scraped cloaked", self.fraction, keep.len()));
        let batch = images::batch(CLOAKED, &rows)?;
        ctx.write("scraped_images", batch.schema(), &[batch])?;
        Ok(())
    }
}

/// A protected user's cloaked training picture (`replaced`: the ids the cloak replaced).
fn is_cloaked_training(row: &ImageRow, replaced: &HashSet<String>, splits: &Splits) -> bool {
    replaced.contains(&row.image_id) && splits.by_image.get(&row.image_id).is_some_and(|(who, side)| *side == Side::Train && splits.protected.contains(who))
}

impl Mix {
    /// The image ids scraped cloaked: per protected user, the first round(fraction x n) of
    /// their cloaked training pictures in an order drawn from the seed and the user's name.
    fn kept_cloaked(&self, cloaked: &[ImageRow], replaced: &HashSet<String>, splits: &Splits) -> HashSet<String> {
        let mut by_user: HashMap<&str, Vec<&str>> = HashMap::new();
        for r in cloaked.iter().filter(|r| is_cloaked_training(r, replaced, splits)) {
            by_user.entry(r.identity.as_str()).or_default().push(r.image_id.as_str());
        }
        let mut keep = HashSet::new();
        for (user, mut ids) in by_user {
            ids.sort();
            let name_seed = u64::from_le_bytes(Sha256::digest(user.as_bytes())[..8].try_into().expect("8 bytes"));
            Rng::new(self.seed ^ name_seed).shuffle(&mut ids);
            let n = (ids.len() as f64 * self.fraction).round() as usize;
            keep.extend(ids[..n].iter().map(|s| s.to_string()));
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::images::Status;
    use crate::tables::splits::Role;

    fn row(id: &str, who: &str, cloaked: bool) -> ImageRow {
        let uri = format!("/data/{who}/{id}.jpg");
        ImageRow {
            image_id: id.into(),
            identity: who.into(),
            uri: if cloaked { format!("/run/cloaked/{who}/{id}.png") } else { uri.clone() },
            rel_path: format!("{who}/{id}.jpg"),
            status: Status::Ok,
            error: None,
            format: None,
            width: None,
            height: None,
            exif_orientation: None,
            bytes: 1,
            sha256: None,
            original_uri: uri,
        }
    }

    #[test]
    fn shares_are_nested_and_zero_and_one_are_exact() {
        // A framing filter ran before the cloak: every picture is a copy, "f" one the cloak left.
        let framed = ImageRow { uri: "/run/filtered/frame/ann/f.png".into(), ..row("f", "ann", false) };
        let cloaked: Vec<ImageRow> = (0..20).map(|i| row(&format!("p{i:02}"), "ann", true)).chain([row("x", "bob", false), framed.clone()]).collect();
        let clean: Vec<ImageRow> = (0..20).map(|i| row(&format!("p{i:02}"), "ann", false)).chain([row("x", "bob", false), framed]).collect();
        let replaced = images::replaced(&clean, &cloaked);
        let mut splits = Splits::default();
        for r in &cloaked {
            splits.by_image.insert(r.image_id.clone(), (r.identity.clone(), Side::Train));
        }
        splits.protected.insert("ann".into());
        assert_eq!(splits.role("ann"), Role::Protected);
        let kept = |f: f64| Mix { fraction: f, seed: 3 }.kept_cloaked(&cloaked, &replaced, &splits);
        assert!(kept(0.0).is_empty());
        assert_eq!(kept(1.0).len(), 20, "the framed picture the cloak left is not counted as cloaked");
        let (quarter, half) = (kept(0.25), kept(0.5));
        assert_eq!((quarter.len(), half.len()), (5, 10));
        assert!(quarter.is_subset(&half) && half.is_subset(&kept(0.75)));
    }
}
