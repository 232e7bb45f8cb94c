//! One writer per location: a lease on a lock object, so two runs into one run root cannot
//! delete each other's parts.
//!
//! - **Local folders** lock the file with `flock(2)`. The kernel releases the lock when its
//!   holder exits, killed or not, so a stale lock never outlives its run and needs no expiry.
//! - **S3** has no locks: the lease is an object created only if absent (`If-None-Match: *`)
//!   that names its holder and an expiry. The holder renews it every third of its time to live
//!   with a write conditional on the version it last wrote (`If-Match`); a killed run stops
//!   renewing, and once the expiry has passed the next run takes the lease over with the same
//!   conditional write on the stale version, so of two runs racing to take it exactly one wins.
//!   Expiry compares wall clocks: machines sharing a bucket need clocks within the time to live.
//!
//! The lock object stays after its run ends (locally an unlocked file, on S3 a lease marked
//! expired): it records the last holder and costs nothing.

use std::fs;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};

use super::Location;

/// Who holds a lease, as written in the lock object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Holder {
    /// Unique per lease: host, process and start time.
    owner: String,
    host: String,
    pid: u32,
    command: String,
    started_unix: u64,
    /// S3 only: when the lease lapses unless renewed (0 once released).
    expires_unix: u64,
}

impl Holder {
    /// Whether the holder is known to be dead: it ran on this host and no process has its pid.
    fn is_gone(&self) -> bool {
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        self.host == hostname() && unsafe { libc::kill(self.pid as libc::pid_t, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }

    fn describe(&self) -> String {
        format!("`{}` (pid {} on {}, started {})", self.command, self.pid, self.host, format_unix(self.started_unix))
    }
}

/// The error when another run holds the lease: the message names it. (`cloakbench run` exits
/// with its own code for it, since waiting and retrying helps.)
#[derive(Debug)]
pub struct InUse(pub String);

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InUse {}

/// A held lease; dropping it releases the lease.
pub struct Lease {
    _held: Held,
}

enum Held {
    /// The open, flock-ed lock file: closing it unlocks.
    Local {
        _file: fs::File,
    },
    S3 {
        stop: Option<mpsc::Sender<()>>,
        renewer: Option<JoinHandle<()>>,
    },
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::S3 { stop, renewer } = self {
            drop(stop.take()); // wakes the renewer, which releases the lease and ends
            if let Some(renewer) = renewer.take() {
                let _ = renewer.join();
            }
        }
    }
}

/// Takes the lease on `location/key` for `command`, or fails saying who holds it.
/// `ttl` is the S3 lease's time to live (renewed every third of it).
pub fn acquire(location: &Location, key: &str, command: &str, ttl: Duration) -> Result<Lease> {
    let holder = new_holder(command, ttl);
    let held = match location.local_file(key)? {
        Some(path) => acquire_local(&path, &holder)?,
        None => acquire_s3(location, key, holder, ttl)?,
    };
    Ok(Lease { _held: held })
}

fn new_holder(command: &str, ttl: Duration) -> Holder {
    let now = unix_now();
    let host = hostname();
    let pid = std::process::id();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    Holder {
        owner: format!("{host}:{pid}:{now}.{nanos:09}"),
        host,
        pid,
        command: command.to_owned(),
        started_unix: now,
        expires_unix: now + ttl.as_secs().max(1),
    }
}

fn acquire_local(path: &std::path::Path, holder: &Holder) -> Result<Held> {
    let cannot = || format!("{}: cannot take the run's lock", path.display());
    let mut file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).with_context(cannot)?;
    // SAFETY: flock on a file descriptor we own; it neither reads nor writes memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(cannot);
        }
        let other = fs::read(path).ok().and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
        let who = other.map(|h| h.describe()).unwrap_or_else(|| "another cloakbench process".into());
        let url = path.display();
        return Err(InUse(format!(
            "{url}: the run is in use by {who}: one run writes into a run root at a time; wait for it to finish (a killed run releases the lock at once)"
        ))
        .into());
    }
    use std::io::{Seek, Write};
    file.set_len(0).with_context(cannot)?;
    file.rewind().with_context(cannot)?;
    file.write_all(&serde_json::to_vec_pretty(holder)?).with_context(cannot)?;
    Ok(Held::Local { _file: file })
}

fn acquire_s3(location: &Location, key: &str, holder: Holder, ttl: Duration) -> Result<Held> {
    let url = location.url_of(key);
    let body = |h: &Holder| Bytes::from(serde_json::to_vec_pretty(h).expect("a holder serialises"));
    let version = match location.replace(key, body(&holder), None)? {
        Some(version) => version,
        None => {
            let Some((stale, stale_version)) = location.get_versioned(key)? else {
                bail!("{url}: the run's lease vanished while it was being taken; run again");
            };
            let other: Option<Holder> = serde_json::from_slice(&stale).ok();
            // A live lease blocks, unless its holder ran on this host and its process is gone
            // (a killed shard retried on the same node need not wait for the lease to lapse).
            if let Some(other) = other.as_ref().filter(|o| o.expires_unix > unix_now() && !o.is_gone()) {
                return Err(InUse(format!(
                    "{url}: the run is in use by {}: one run writes into a run root at a time; wait for it to finish \
                     (a run that was killed lets its lease lapse at {})",
                    other.describe(),
                    format_unix(other.expires_unix)
                ))
                .into());
            }
            // Lapsed (or unreadable): take it over, unless another run just did.
            match location.replace(key, body(&holder), Some(&stale_version))? {
                Some(version) => {
                    if let Some(other) = other.filter(|o| o.expires_unix > 0) {
                        let why = if other.expires_unix > unix_now() { "the lease of a process that is gone" } else { "the lapsed lease" };
                        warn(&format!("{url}: took over {why}: {}", other.describe()));
                    }
                    version
                }
                None => return Err(InUse(format!("{url}: another run took the lapsed lease first: one run writes into a run root at a time")).into()),
            }
        }
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let (location, key) = (location.clone(), key.to_owned());
    let renewer = std::thread::spawn(move || renew_until_dropped(&location, &key, holder, version, ttl, &stopped));
    Ok(Held::S3 { stop: Some(stop), renewer: Some(renewer) })
}

/// Renews the lease every third of its time to live; when the lease is dropped, marks it
/// expired (conditionally, so a lease someone else took over is left alone).
fn renew_until_dropped(location: &Location, key: &str, mut holder: Holder, mut version: UpdateVersion, ttl: Duration, stopped: &mpsc::Receiver<()>) {
    let url = location.url_of(key);
    let write = |h: &Holder, v: &UpdateVersion| location.replace(key, Bytes::from(serde_json::to_vec_pretty(h).expect("serialises")), Some(v));
    loop {
        let released = !matches!(stopped.recv_timeout(ttl / 3), Err(mpsc::RecvTimeoutError::Timeout));
        holder.expires_unix = if released { 0 } else { unix_now() + ttl.as_secs().max(1) };
        match write(&holder, &version) {
            Ok(Some(next)) => version = next,
            Ok(None) => {
                warn(&format!("{url}: the run's lease was taken over by another run (was this one stalled past its lease?)"));
                return;
            }
            // A failed renewal is retried at the next tick; the lease lasts three ticks.
            Err(e) => warn(&format!("{url}: cannot renew the run's lease: {e:#}")),
        }
        if released {
            return;
        }
    }
}

/// Lease trouble is always shown, also under `--quiet`: it means two runs met.
fn warn(message: &str) {
    eprintln!("[cloakbench] warning: {message}");
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn format_unix(secs: u64) -> String {
    let now = unix_now();
    match secs > now {
        true => format!("unix time {secs}, in {} s", secs - now),
        false => format!("unix time {secs}, {} s ago", now - secs),
    }
}

/// This host's name, as a lease records its holder's.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok { String::from_utf8_lossy(&buf[..end]).into_owned() } else { "unknown host".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_local_lease_is_refused_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("cloakbench-lease-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let run = Location::create(dir.to_str().unwrap()).unwrap();
        let first = acquire(&run, "_lock", "first", Duration::from_secs(60)).unwrap();
        let err = acquire(&run, "_lock", "second", Duration::from_secs(60)).err().expect("a second lease is refused");
        let msg = format!("{err:#}");
        assert!(msg.contains("in use by `first`") && msg.contains(&std::process::id().to_string()), "{msg}");
        drop(first);
        acquire(&run, "_lock", "third", Duration::from_secs(60)).expect("free once dropped");
        fs::remove_dir_all(dir).ok();
    }
}
