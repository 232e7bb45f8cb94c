//! The whole baseline against a real S3 API: moto's server on 127.0.0.1, started here. The
//! dataset is read from a bucket and the run's tables are written back to it; the secret key
//! must appear in no output and no table.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cloakbench, python, python_check, repo, scratch, shared, text};

pub const KEY_ID: &str = "AKIACLOAKBENCHTEST01";
pub const SECRET: &str = "s3cr3t-never-to-be-printed-7f3a9c";

pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_moto() -> (Server, String) {
    let port = free_port();
    let moto = python().parent().unwrap().join("moto_server");
    let mut cmd = Command::new(moto);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
    (serve(cmd, port, "moto_server (installed in .venv by make setup)"), format!("http://127.0.0.1:{port}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a server and waits until it accepts connections on `port`.
fn serve(mut cmd: Command, port: u16, what: &str) -> Server {
    let server = Server(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}")));
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "{what} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

#[test]
fn baseline_reads_and_writes_s3() {
    let fixture = shared("datasets/fixture_facescrub12x10");
    let (_server, endpoint) = start_moto();
    let env = [("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET), ("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint.as_str())];
    python_check("s3_helper.py", &["upload", &endpoint, "faces", "fixture", fixture.to_str().unwrap()], &env);

    let out = cloakbench(&["run", "pipelines/baseline.toml", "--set", "ingest.dataset=s3://faces/fixture", "--run-root", "s3://faces/runs"], &env);
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(printed.contains("linear_probe on dlib_resnet29_150"), "{printed}");
    assert!(!printed.contains(SECRET) && !printed.contains(KEY_ID), "credentials leaked into output");

    let local = scratch("s3-download");
    let listing = python_check("s3_helper.py", &["download", &endpoint, "faces", "runs/baseline", local.to_str().unwrap()], &env);
    assert!(listing.contains("runs/baseline/metrics.parquet"), "{listing}");
    let summary = python_check("check_tables.py", &[local.to_str().unwrap(), "--expect-errors", "0"], &[]);
    assert!(summary.contains("s3://faces/fixture/"), "uris should name the bucket: {summary}");
    for f in std::fs::read_dir(&local).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap_or_default();
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "secret inside a table");
    }

    // The report of a run on S3: written to a local folder, and beside the run on S3 by default.
    let pages = scratch("s3-report");
    cloakbench(&["report", "s3://faces/runs/baseline", "--out", pages.to_str().unwrap(), "--quiet"], &env);
    let page = std::fs::read_to_string(pages.join("index.html")).unwrap();
    assert!(page.contains("s3://faces/runs/baseline") && page.contains("id=\"accuracy\""), "the run's folder and its accuracy section");
    assert!(!page.contains(SECRET) && !page.contains(KEY_ID), "credentials leaked into the report");
    let printed = text(&cloakbench(&["report", "s3://faces/runs/baseline"], &env).stdout);
    assert!(printed.contains("s3://faces/runs/baseline/report/index.html"), "{printed}");
    let listing = python_check("s3_helper.py", &["download", &endpoint, "faces", "runs/baseline/report", pages.join("from-s3").to_str().unwrap()], &env);
    assert!(listing.contains("runs/baseline/report/index.html"), "{listing}");
    std::fs::remove_dir_all(pages).ok();

    // A wrong secret gives a clear error that names the bucket but not the secret.
    let bad = Command::new(env!("CARGO_BIN_EXE_cloakbench"))
        .args(["run", "pipelines/baseline.toml", "--force", "--set", "ingest.dataset=s3://faces/fixture", "--run-root", "s3://no-such-bucket/runs"])
        .envs(env)
        .current_dir(repo())
        .output()
        .unwrap();
    let err = text(&bad.stderr);
    assert!(!bad.status.success() && err.contains("no-such-bucket") && !err.contains(SECRET), "{err}");
    std::fs::remove_dir_all(local).ok();
}

/// Credentials, endpoint and metadata variables of the AWS SDKs, removed so that a test
/// controls what the binary sees.
const AWS_VARIABLES: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SKIP_SIGNATURE",
    "AWS_PROFILE",
    "AWS_METADATA_ENDPOINT",
];

/// Without credentials the run fails at once and says so (it used to ask the instance-metadata
/// address for a minute and fail with an error about a PUT to it).
#[test]
fn s3_without_credentials_fails_at_once_saying_so() {
    // No metadata service either: a local port nobody listens on refuses the connection.
    let closed = free_port();
    let root = scratch("s3-no-credentials");
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloakbench"));
    cmd.args(["run", "pipelines/baseline.toml", "--set", "ingest.dataset=s3://faces/fixture", "--run-root", root.to_str().unwrap()]);
    for var in AWS_VARIABLES {
        cmd.env_remove(var);
    }
    let out = cmd.env("AWS_METADATA_ENDPOINT", format!("http://127.0.0.1:{closed}")).current_dir(repo()).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no S3 credentials") && err.contains("AWS_ACCESS_KEY_ID") && err.contains("s3://faces/fixture"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    std::fs::remove_dir_all(root).ok();
}

/// A run root on S3 has one writer: a live lease (here another machine's) refuses the run with
/// exit code 4 naming its holder; a lapsed one (a killed run's) is taken over, renewed while the
/// run works, and marked expired when it ends.
#[test]
fn a_run_root_on_s3_has_one_writer_and_a_lapsed_lease_is_taken_over() {
    let fixture = shared("datasets/fixture_facescrub12x10");
    let (_server, endpoint) = start_moto();
    let env = [("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET), ("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint.as_str())];
    python_check("s3_helper.py", &["upload", &endpoint, "faces", "fixture", fixture.to_str().unwrap()], &env);
    let dir = scratch("s3-lease");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let put_lease_of = |key: &str, host: &str, pid: u32, expires: u64| {
        let lease = serde_json::json!({"owner": format!("{host}:{pid}:1"), "host": host, "pid": pid, "command": "cloakbench run baseline",
                                       "started_unix": now - 100, "expires_unix": expires});
        let file = dir.join("lease.json");
        std::fs::write(&file, lease.to_string()).unwrap();
        python_check("s3_helper.py", &["put", &endpoint, "faces", key, file.to_str().unwrap()], &env);
    };
    let put_lease = |expires: u64| put_lease_of("runs/baseline/_lock", "elsewhere", 4242, expires);
    let args = ["run", "pipelines/baseline.toml", "--set", "ingest.dataset=s3://faces/fixture", "--run-root", "s3://faces/runs"];

    put_lease(now + 3600);
    let refused = crate::cloakbench_exits(&args, &env, 4);
    let err = text(&refused.stderr);
    assert!(err.contains("s3://faces/runs/baseline/_lock: the run is in use by `cloakbench run baseline` (pid 4242 on elsewhere"), "{err}");

    // A live lease of a process of this host that is gone (a killed run retried on its node)
    // is taken over at once.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let this_host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    put_lease_of("gone/baseline/_lock", &this_host, gone.id(), now + 3600);
    let log =
        text(&cloakbench(&["run", "pipelines/baseline.toml", "--set", "ingest.dataset=s3://faces/fixture", "--run-root", "s3://faces/gone"], &env).stderr);
    assert!(log.contains(&format!("took over the lease of a process that is gone: `cloakbench run baseline` (pid {} on {this_host}", gone.id())), "{log}");

    put_lease(now - 10);
    let ttl = [("CLOAKBENCH_LEASE_TTL_S", "3")];
    let out = cloakbench(&args, &[&env[..], &ttl[..]].concat());
    let log = text(&out.stderr);
    assert!(log.contains("took over the lapsed lease: `cloakbench run baseline` (pid 4242 on elsewhere"), "{log}");
    assert!(!log.contains("cannot renew") && !log.contains("taken over by another run"), "the lease was not renewed:\n{log}");
    let lease: serde_json::Value =
        serde_json::from_str(python_check("s3_helper.py", &["get", &endpoint, "faces", "runs/baseline/_lock", "-"], &env).trim()).unwrap();
    assert_eq!(lease["expires_unix"], 0, "released at the end: {lease}");
    assert_ne!(lease["pid"], 4242);
    std::fs::remove_dir_all(dir).ok();
}

/// The fault-injecting proxy of tests/python/s3_fault_proxy.py in front of `upstream`.
fn start_fault_proxy(upstream: &str, seed: &str, log: &std::path::Path, extra: &[&str]) -> (Server, String) {
    let upstream_port = upstream.rsplit(':').next().unwrap();
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/python/s3_fault_proxy.py")).args([upstream_port, &port.to_string(), seed, log.to_str().unwrap()]).args(extra);
    (serve(cmd, port, "the fault proxy"), format!("http://127.0.0.1:{port}"))
}

/// Faults counted by kind in the proxy's log.
fn faults(log: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts.entry(entry["fault"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// S3 through 500s, 503 SlowDown, delays, reset connections and bodies cut short: the run
/// retries (logging each retry and the count) and ends with the tables of a fault-free run.
/// A permanent fault on one object fails the run with an error naming that object and no
/// credential, and leaves no object under that table's name.
#[test]
fn runs_through_s3_faults_end_with_the_fault_free_tables_or_an_error_naming_the_object() {
    let fixture = shared("datasets/fixture_facescrub12x10");
    let (_server, endpoint) = start_moto();
    // The credentials and an endpoint: moto itself, or the proxy in front of it.
    let env = |endpoint: &str, extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let base = [("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET), ("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint)];
        base.iter().chain(extra).map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    let direct = env(&endpoint, &[]);
    let direct_refs: Vec<(&str, &str)> = direct.iter().map(|(k, v)| (*k, v.as_str())).collect();
    python_check("s3_helper.py", &["upload", &endpoint, "faces", "fixture", fixture.to_str().unwrap()], &direct_refs);
    let run = |root: &str, envs: &[(&'static str, String)]| {
        Command::new(env!("CARGO_BIN_EXE_cloakbench"))
            .args(["run", "pipelines/baseline.toml", "--set", "ingest.dataset=s3://faces/fixture", "--run-root", root])
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(repo())
            .output()
            .unwrap()
    };
    let clean = run("s3://faces/clean", &direct);
    assert!(clean.status.success(), "{}", text(&clean.stderr));

    let dir = scratch("s3-faults");
    let log = dir.join("faults.jsonl");
    let (_proxy, proxied) = start_fault_proxy(&endpoint, "7", &log, &[]);
    let faulty = run("s3://faces/faulty", &env(&proxied, &[]));
    let err = text(&faulty.stderr);
    assert!(faulty.status.success(), "the run did not survive the faults {:?}:\n{err}", faults(&log));
    let injected = faults(&log);
    let total: usize = injected.values().sum();
    let retried = err.lines().filter(|l| l.contains("S3 retry")).count();
    eprintln!("faults injected: {injected:?} ({total}); retries logged: {retried}");
    assert!(total >= 10 && injected.len() >= 4, "too few faults to mean anything: {injected:?}");
    assert!(retried >= 1 && err.contains(&format!("S3: {retried} requests retried")), "{err}");
    assert!(!err.contains(SECRET) && !err.contains(KEY_ID), "credentials in the log");
    let (a, b) = (dir.join("clean"), dir.join("faulty"));
    python_check("s3_helper.py", &["download", &endpoint, "faces", "clean/baseline", a.to_str().unwrap()], &direct_refs);
    python_check("s3_helper.py", &["download", &endpoint, "faces", "faulty/baseline", b.to_str().unwrap()], &direct_refs);
    let same = python_check("compare_runs.py", &[a.to_str().unwrap(), b.to_str().unwrap()], &[]);
    eprintln!("tables after the faults, against the fault-free run: {}", same.trim());

    // A permanent fault on the metrics table's upload: an error naming it, after 2 retries.
    let log = dir.join("permanent.jsonl");
    let (_proxy, proxied) = start_fault_proxy(&endpoint, "8", &log, &["--fail-put", "metrics.parquet"]);
    let failed = run("s3://faces/permanent", &env(&proxied, &[("CLOAKBENCH_S3_RETRIES", "2")]));
    let err = text(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(err.contains("s3://faces/permanent/baseline/metrics.parquet") && !err.contains(SECRET) && !err.contains(KEY_ID), "{err}");
    let listing = python_check("s3_helper.py", &["download", &endpoint, "faces", "permanent/baseline", dir.join("permanent").to_str().unwrap()], &direct_refs);
    assert!(!listing.contains("metrics.parquet") && listing.contains("predictions.parquet"), "{listing}");
    // What was written is whole: every table there reads back.
    let code = format!(
        "import glob, polars as pl\nfor f in glob.glob({:?} + '/*.parquet'): pl.read_parquet(f)\nprint('ok')",
        dir.join("permanent").display().to_string()
    );
    let read = Command::new(python()).args(["-c", &code]).output().unwrap();
    assert!(read.status.success(), "{}", text(&read.stderr));
    eprintln!("permanent fault: {:?}; the run failed naming the object", faults(&log));
    std::fs::remove_dir_all(dir).ok();
}
