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
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let moto = python().parent().unwrap().join("moto_server");
    let child = Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server (installed in .venv by make setup)");
    let server = Server(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "moto_server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    (server, format!("http://127.0.0.1:{port}"))
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
