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

/// One picture's assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub image_id: String,
    pub identity: String,
    pub side: Side,
    pub protected: bool,
}

pub fn batch(rows: &[Assignment]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        strings(rows.iter().map(|r| &r.identity)),
        strings(rows.iter().map(|r| r.side.as_str())),
        Arc::new(rows.iter().map(|r| Some(r.protected)).collect::<BooleanArray>()),
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
}

impl Splits {
    /// Every identity, sorted.
    pub fn identities(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.by_image.values().map(|(who, _)| who).collect();
        set.into_iter().cloned().collect()
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
        if column::<BooleanArray>(b, "protected")?.value(i) {
            out.protected.insert(who.to_owned());
        }
        out.by_image.insert(id.to_owned(), (who.to_owned(), side));
    }
    Ok(out)
}
