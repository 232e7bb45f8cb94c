//! `splits`: which side of the train/test split each decodable picture is on, and whose
//! pictures are protected (written by the `split` stage).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray};

use super::{column, rows, strings};

pub const SPLITS: &str = "splits";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Train,
    Test,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Train => "train",
            Side::Test => "test",
        }
    }
}

/// What part an identity plays in a study.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A protected user: their training pictures may be cloaked; evaluated.
    Protected,
    /// An unprotected user the trainer's classifiers are evaluated on.
    Evaluated,
    /// An identity whose pictures are public: the adaptive trainer's and the cloak detector's
    /// training material, never evaluated.
    Public,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Protected => "protected",
            Role::Evaluated => "evaluated",
            Role::Public => "public",
        }
    }
}

/// One picture's assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub image_id: String,
    pub identity: String,
    pub side: Side,
    pub role: Role,
}

pub fn batch(rows: &[Assignment]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        strings(rows.iter().map(|r| &r.identity)),
        strings(rows.iter().map(|r| r.side.as_str())),
        Arc::new(rows.iter().map(|r| Some(r.role == Role::Protected)).collect::<BooleanArray>()),
        strings(rows.iter().map(|r| r.role.as_str())),
    ];
    super::batch(SPLITS, None, columns)
}

/// A read `splits` table.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    /// image id -> (identity, side)
    pub by_image: HashMap<String, (String, Side)>,
    /// The protected users.
    pub protected: BTreeSet<String>,
    /// The identities whose pictures are public (never evaluated).
    pub public: BTreeSet<String>,
}

impl Splits {
    /// Every identity, sorted.
    pub fn identities(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.by_image.values().map(|(who, _)| who).collect();
        set.into_iter().cloned().collect()
    }

    /// The identities a trainer's classifiers are evaluated on (all but the public ones), sorted.
    pub fn evaluated(&self) -> Vec<String> {
        self.identities().into_iter().filter(|who| !self.public.contains(who)).collect()
    }

    pub fn role(&self, identity: &str) -> Role {
        if self.protected.contains(identity) {
            Role::Protected
        } else if self.public.contains(identity) {
            Role::Public
        } else {
            Role::Evaluated
        }
    }

    /// Whether `image_id` is a training picture of `identity`.
    pub fn is_train_of(&self, image_id: &str, identity: &str) -> bool {
        self.by_image.get(image_id).is_some_and(|(who, side)| who == identity && *side == Side::Train)
    }
}

pub fn read(batches: &[RecordBatch]) -> Result<Splits> {
    let mut out = Splits::default();
    for (b, i) in rows(batches) {
        let (id, who, side) =
            (column::<StringArray>(b, "image_id")?.value(i), column::<StringArray>(b, "identity")?.value(i), column::<StringArray>(b, "split")?.value(i));
        let side = match side {
            "train" => Side::Train,
            "test" => Side::Test,
            other => bail!("splits: unknown side {other:?} for {id}"),
        };
        match column::<StringArray>(b, "role")?.value(i) {
            "protected" => out.protected.insert(who.to_owned()),
            "public" => out.public.insert(who.to_owned()),
            "evaluated" => false,
            other => bail!("splits: unknown role {other:?} for {id}"),
        };
        out.by_image.insert(id.to_owned(), (who.to_owned(), side));
    }
    Ok(out)
}
