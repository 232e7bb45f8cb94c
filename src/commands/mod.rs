pub mod bench;
pub mod cloak;
