//! The `split` stage: per identity, seeded, a fixed fraction of each person's pictures to train
//! and the rest to test (70/30 in the FaceScrub protocol), and which users are protected.
//!
//! Each identity is shuffled with its own seed derived from the run seed and its name, so adding
//! a person to a dataset does not move anyone else's pictures between train and test.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pipeline::{Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::rng::Rng;
use crate::tables::images::{self, Status};
use crate::tables::splits::{self, Assignment, Role, SPLITS, Side};

pub const KIND: Kind = Kind {
    name: "split",
    source: file!(),
    summary: "per-identity seeded train/test split; names the protected users",
    inputs: &[Slot::new("images", images::ANY)],
    optional_inputs: &[],
    outputs: &[Slot::new("splits", &[SPLITS])],
    labels: &[],
    scope: Scope::Dataset,
    plan: plan_from::<Split>,
};

/// Configuration of the `split` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Fraction of each identity's pictures used for training.
    #[serde(default = "default_fraction")]
    pub train_fraction: f64,
    #[serde(default)]
    pub seed: u64,
    /// Protected users, by identity name.
    #[serde(default)]
    pub protected: Vec<String>,
    /// When `protected` is empty: how many users to protect, drawn with the seed.
    #[serde(default)]
    pub protected_count: usize,
    /// Users drawn by `protected_count` need at least this many decodable pictures.
    #[serde(default)]
    pub protected_min_pictures: usize,
    /// Identities whose pictures are public, by name: what the adaptive trainer and the cloak
    /// detector learn from. They are never evaluated.
    #[serde(default)]
    pub public: Vec<String>,
    /// When `public` is empty: how many public identities to draw (with the seed) from those
    /// that are not protected.
    #[serde(default)]
    pub public_count: usize,
}

fn default_fraction() -> f64 {
    0.7
}

impl StageConfig for Split {
    fn validate(&self) -> Result<(), String> {
        check(
            (0.0..=1.0).contains(&self.train_fraction),
            "train_fraction",
            self.train_fraction,
            "within 0..1 (the share of each identity's pictures that trains)",
        )?;
        check(self.protected.is_empty() || self.protected_count == 0, "protected_count", self.protected_count, "0 when protected names the users")?;
        check(self.public.is_empty() || self.public_count == 0, "public_count", self.public_count, "0 when public names the identities")?;
        let both: Vec<&String> = self.public.iter().filter(|p| self.protected.contains(p)).collect();
        check(both.is_empty(), "public", &both, "identities that are not protected")
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let mut by_identity: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in images::read(&ctx.read("images")?)?.into_iter().filter(|r| r.status == Status::Ok) {
            by_identity.entry(row.identity).or_default().push(row.image_id);
        }
        let rows = self.assign(by_identity)?;
        let n_train = rows.iter().filter(|r| r.side == Side::Train).count();
        let who = |role: Role| {
            let mut names: Vec<&str> = rows.iter().filter(|r| r.role == role).map(|r| r.identity.as_str()).collect();
            names.dedup();
            names
        };
        let public = if self.public.is_empty() && self.public_count == 0 { String::new() } else { format!("; {} public identities", who(Role::Public).len()) };
        ctx.report.push(format!("split: {n_train} train / {} test pictures; protected users: {:?}{public}", rows.len() - n_train, who(Role::Protected)));
        let batch = splits::batch(&rows)?;
        ctx.write("splits", batch.schema(), &[batch])?;
        Ok(())
    }
}

impl Split {
    /// Splits every identity's pictures; `by_identity` maps a name to its image ids.
    pub fn assign(&self, by_identity: BTreeMap<String, Vec<String>>) -> Result<Vec<Assignment>> {
        let protected = self.protected_users(&by_identity)?;
        let public = self.public_identities(&by_identity, &protected)?;
        let mut rows = Vec::new();
        for (identity, mut ids) in by_identity {
            ids.sort();
            Rng::new(self.seed ^ name_seed(&identity)).shuffle(&mut ids);
            let n = ids.len();
            let mut n_train = (n as f64 * self.train_fraction).round() as usize;
            if n >= 2 {
                n_train = n_train.clamp(1, n - 1); // everyone keeps a picture on each side
            }
            let role = if protected.contains(&identity) {
                Role::Protected
            } else if public.contains(&identity) {
                Role::Public
            } else {
                Role::Evaluated
            };
            rows.extend(ids.into_iter().enumerate().map(|(i, image_id)| Assignment {
                image_id,
                identity: identity.clone(),
                side: if i < n_train { Side::Train } else { Side::Test },
                role,
            }));
        }
        Ok(rows)
    }

    fn protected_users(&self, by_identity: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
        if let Some(missing) = self.protected.iter().find(|p| !by_identity.contains_key(*p)) {
            bail!("protected user {missing:?} has no decodable pictures in the dataset");
        }
        if !self.protected.is_empty() {
            return Ok(self.protected.clone());
        }
        let mut names: Vec<String> = by_identity.iter().filter(|(_, ids)| ids.len() >= self.protected_min_pictures).map(|(who, _)| who.clone()).collect();
        if self.protected_count > names.len() {
            bail!("protected_count {} exceeds the {} identities with at least {} pictures", self.protected_count, names.len(), self.protected_min_pictures);
        }
        Rng::new(self.seed).shuffle(&mut names);
        names.truncate(self.protected_count);
        Ok(names)
    }

    fn public_identities(&self, by_identity: &BTreeMap<String, Vec<String>>, protected: &[String]) -> Result<Vec<String>> {
        if let Some(missing) = self.public.iter().find(|p| !by_identity.contains_key(*p)) {
            bail!("public identity {missing:?} has no decodable pictures in the dataset");
        }
        if !self.public.is_empty() {
            return Ok(self.public.clone());
        }
        let mut names: Vec<String> = by_identity.keys().filter(|who| !protected.contains(who)).cloned().collect();
        if self.public_count > names.len() {
            bail!("public_count {} exceeds the {} identities that are not protected", self.public_count, names.len());
        }
        // Another stream than the protected users' draw, so adding one does not move the other.
        Rng::new(self.seed ^ 0x9B1C_0FF1_CE00_0001).shuffle(&mut names);
        names.truncate(self.public_count);
        names.sort();
        Ok(names)
    }
}

fn name_seed(name: &str) -> u64 {
    u64::from_le_bytes(Sha256::digest(name.as_bytes())[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(sizes: &[usize]) -> BTreeMap<String, Vec<String>> {
        sizes.iter().enumerate().map(|(p, &n)| (format!("p{p}"), (0..n).map(|i| format!("p{p}-{i}")).collect())).collect()
    }

    fn split(seed: u64) -> Split {
        Split { train_fraction: 0.7, seed, protected: vec![], protected_count: 1, protected_min_pictures: 0, public: vec![], public_count: 0 }
    }

    #[test]
    fn train_and_test_are_disjoint_and_cover_everything() {
        let rows = split(1).assign(data(&[10, 7, 2, 1])).unwrap();
        assert_eq!(rows.len(), 20);
        let mut ids: Vec<_> = rows.iter().map(|r| &r.image_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20, "an image appears twice");
        let train = |p: &str| rows.iter().filter(|r| r.identity == p && r.side == Side::Train).count();
        assert_eq!((train("p0"), train("p1"), train("p2"), train("p3")), (7, 5, 1, 1));
    }

    #[test]
    fn the_seed_decides_and_other_identities_do_not() {
        let a = split(3).assign(data(&[10])).unwrap();
        let b = split(3).assign(data(&[10, 9])).unwrap();
        assert_eq!(a, b[..10].iter().map(|r| Assignment { role: a[0].role, ..r.clone() }).collect::<Vec<_>>());
        assert_ne!(a, split(4).assign(data(&[10])).unwrap());
    }

    #[test]
    fn protected_users_are_named_or_drawn() {
        let rows = split(0).assign(data(&[4, 4, 4])).unwrap();
        let protected: std::collections::BTreeSet<_> = rows.iter().filter(|r| r.role == Role::Protected).map(|r| &r.identity).collect();
        assert_eq!(protected.len(), 1);
        let named = Split { protected: vec!["p2".into()], ..split(0) };
        assert!(named.assign(data(&[4, 4, 4])).unwrap().iter().all(|r| (r.role == Role::Protected) == (r.identity == "p2")));
        let missing = Split { protected: vec!["nobody".into()], ..split(0) };
        assert!(missing.assign(data(&[4])).is_err());
    }

    #[test]
    fn public_identities_are_disjoint_from_the_protected_and_keep_their_draw() {
        let with_public = Split { protected_count: 2, public_count: 3, ..split(5) };
        let rows = with_public.assign(data(&[6, 6, 6, 6, 6, 6, 6])).unwrap();
        let of = |role| rows.iter().filter(|r| r.role == role).map(|r| r.identity.clone()).collect::<std::collections::BTreeSet<_>>();
        let (protected, public) = (of(Role::Protected), of(Role::Public));
        assert_eq!((protected.len(), public.len(), of(Role::Evaluated).len()), (2, 3, 2));
        assert!(protected.is_disjoint(&public));
        // The protected draw does not depend on the public one.
        let without = Split { protected_count: 2, ..split(5) }.assign(data(&[6, 6, 6, 6, 6, 6, 6])).unwrap();
        assert_eq!(protected, without.iter().filter(|r| r.role == Role::Protected).map(|r| r.identity.clone()).collect());
        // Drawn users need enough pictures.
        let picky = Split { protected_count: 1, protected_min_pictures: 5, ..split(0) };
        let rows = picky.assign(data(&[2, 3, 9])).unwrap();
        assert!(rows.iter().filter(|r| r.role == Role::Protected).all(|r| r.identity == "p2"));
    }
}
