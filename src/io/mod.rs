//! Where data lives: local folders and S3 prefixes behind one [`Location`] type.
//!
//! A dataset, a manifest or a run root is named by a URL: a local path (`data/photos`,
//! `/abs/path`) or `s3://bucket/prefix`. S3 credentials, region and endpoint come from the
//! standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL` for S3-compatible stores); they are never logged, and no
//! error message or table carries them, since only the bucket and key are ever formatted.
//!
//! Every write is atomic: the local store writes a staging file and renames it, S3 publishes
//! an object only when its upload completes. So a reader never sees a partial table.
//!
//! ```no_run
//! let data = cloakbench::io::Location::open("s3://my-bucket/faces")?;
//! for entry in data.list()? { println!("{} {}", entry.key, entry.size); }
//! # anyhow::Ok(())
//! ```

pub mod image;

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

use std::{future::Future, path::PathBuf, sync::{Arc, OnceLock}};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, local::LocalFileSystem,
    path::Path as StorePath,
};

/// Runs async storage code from our synchronous stages on one shared runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("cannot start the I/O runtime")
        })
        .block_on(future)
}

/// A folder-like place: a local directory or an S3 bucket prefix.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
}

/// One object found by [`Location::list`]: its key relative to the location, and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
}

impl Location {
    /// Opens an existing location for reading.
    pub fn open(url: &str) -> Result<Location> {
        Self::connect(url, false)
    }

    /// Opens a location for writing, creating the local folder if needed.
    pub fn create(url: &str) -> Result<Location> {
        Self::connect(url, true)
    }

    fn connect(url: &str, create: bool) -> Result<Location> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("{url}: an S3 URL needs a bucket, as in s3://bucket/prefix");
            }
            let store = s3_store(bucket).with_context(|| format!("{url}: cannot configure S3"))?;
            let url = format!("s3://{bucket}/{}", prefix.trim_matches('/'));
            return Ok(Location { store: Arc::new(store), prefix: StorePath::from(prefix), url });
        }
        if url.contains("://") {
            bail!("{url}: unsupported URL scheme (use a local path or s3://bucket/prefix)");
        }
        let path = PathBuf::from(url);
        if create {
            std::fs::create_dir_all(&path).with_context(|| format!("{url}: cannot create folder"))?;
        } else if !path.is_dir() {
            bail!("{url}: no such folder");
        }
        let root = path.canonicalize().with_context(|| format!("{url}: cannot resolve path"))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .with_context(|| format!("{url}: cannot open folder"))?;
        Ok(Location { store: Arc::new(store), prefix: StorePath::default(), url: root.display().to_string() })
    }

    /// The location's URL (a canonical local path or `s3://bucket/prefix`), for messages and tables.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `key` inside this location.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}", self.url.trim_end_matches('/'), key)
    }

    /// A location for the sub-folder `key`.
    pub fn child(&self, key: &str) -> Location {
        Location { store: self.store.clone(), prefix: self.path(key), url: self.url_of(key) }
    }

    fn path(&self, key: &str) -> StorePath {
        let mut parts: Vec<_> = self.prefix.parts().collect();
        parts.extend(key.split('/').filter(|p| !p.is_empty()).map(Into::into));
        StorePath::from_iter(parts)
    }

    /// Every object below this location, recursively, sorted by key.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let metas: Vec<_> = block_on(self.store.list(prefix).try_collect::<Vec<_>>())
            .with_context(|| format!("{}: cannot list", self.url))?;
        let strip = self.prefix.parts().count();
        let mut entries: Vec<Entry> = metas
            .into_iter()
            .map(|m| Entry {
                key: m.location.parts().skip(strip).map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/"),
                size: m.size,
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// Reads a whole object.
    pub fn get(&self, key: &str) -> Result<Bytes> {
        block_on(self.get_async(key))
    }

    /// Reads a whole object (async, for concurrent fetches).
    pub async fn get_async(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key);
        let result = async { self.store.get(&path).await?.bytes().await }.await;
        result.with_context(|| format!("{}: cannot read", self.url_of(key)))
    }

    /// Writes a whole object atomically (no reader ever sees it half-written).
    pub fn put(&self, key: &str, data: Bytes) -> Result<()> {
        block_on(self.store.put(&self.path(key), PutPayload::from(data)))
            .with_context(|| format!("{}: cannot write", self.url_of(key)))?;
        Ok(())
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool> {
        match block_on(self.store.head(&self.path(key))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("{}: cannot check", self.url_of(key))),
        }
    }

    /// Deletes `key` if present.
    pub fn delete(&self, key: &str) -> Result<()> {
        match block_on(self.store.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("{}: cannot delete", self.url_of(key))),
        }
    }

    /// A streaming, atomic writer for `key` (multipart upload on S3, staged file locally).
    pub fn writer(&self, key: &str) -> object_store::buffered::BufWriter {
        object_store::buffered::BufWriter::new(self.store.clone(), self.path(key))
    }
}

/// An S3 client configured from the standard `AWS_*` variables. A plain-http endpoint (a local
/// S3-compatible server) is allowed only when the endpoint URL itself says `http://`.
fn s3_store(bucket: &str) -> Result<object_store::aws::AmazonS3> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL"));
    if let Ok(endpoint) = endpoint {
        builder = builder.with_endpoint(&endpoint).with_allow_http(endpoint.starts_with("http://"));
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_ok() {
        builder = builder.with_region(std::env::var("AWS_DEFAULT_REGION").unwrap_or_default());
    }
    Ok(builder.build()?)
}

/// Reads many objects of one location concurrently, keeping their order; each result is
/// separate, so one unreadable file does not stop the others.
pub fn fetch_many(location: &Location, keys: &[String], concurrency: usize) -> Vec<Result<Bytes>> {
    use futures::StreamExt;
    block_on(
        futures::stream::iter(keys.iter().map(|k| location.get_async(k)))
            .buffered(concurrency.max(1))
            .collect::<Vec<_>>(),
    )
}

/// Splits a file URL into its folder's URL and the file name, for local paths and S3 keys.
pub fn split_url(url: &str) -> (&str, &str) {
    url.rsplit_once('/').unwrap_or((".", url))
}
