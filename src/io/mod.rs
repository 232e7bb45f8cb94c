//! Where data lives and how it is read: local folders and S3 prefixes behind one [`Location`]
//! type, picture decoding, Parquet files, and the loader that turns picture rows into pixels.
//!
//! A dataset, a manifest or a run root is named by a URL: a local path (`data/photos`,
//! `/abs/path`) or `s3://bucket/prefix`. S3 credentials, region and endpoint come from the
//! standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL` for S3-compatible stores); they are never logged, and no
//! error message or table carries them, since only the bucket and key are ever formatted.
//!
//! Every write is atomic: a local file is written under a staging name and renamed, an S3
//! object is published only when its upload completes. So a reader never sees a partial table.
//!
//! ```no_run
//! let data = cloakbench::io::Location::open("s3://my-bucket/faces")?;
//! for entry in data.walk()? { println!("{entry:?}"); }
//! # anyhow::Ok(())
//! ```
//!
//! This module imports nothing else of the crate: every other module may use it.

pub mod digests;
pub mod image;
pub mod lease;
pub mod location;
pub mod parquet;
pub mod pictures;
pub mod retries;

use std::{future::Future, sync::OnceLock};

use sha2::{Digest, Sha256};

pub use location::{Entry, Listed, Location};

/// Where cloakbench keeps what it can make again (models, digests): `$CLOAKBENCH_HOME`, else
/// `~/.cache/cloakbench`.
pub fn cache_home() -> std::path::PathBuf {
    match std::env::var_os("CLOAKBENCH_HOME") {
        Some(home) => home.into(),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cloakbench"),
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Runs async storage code from our synchronous stages on one shared runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("cannot start the I/O runtime"))
        .block_on(future)
}

/// Splits a file URL into its folder's URL and the file name, for local paths and S3 keys.
pub fn split_url(url: &str) -> (&str, &str) {
    url.rsplit_once('/').unwrap_or((".", url))
}
