//! The registry of stage kinds.
pub mod classify;
pub mod cloak;
pub mod detect;
pub mod embed;
pub mod evaluate;
pub mod ingest;
pub mod reencode;
pub mod split;
pub mod verify;

use crate::pipeline::stage::Kind;

/// Every component kind, in pipeline order.
pub fn kinds() -> &'static [Kind] {
    &[ingest::KIND, split::KIND, detect::KIND, cloak::KIND, reencode::KIND, embed::KIND, classify::KIND, evaluate::KIND, verify::KIND]
}
