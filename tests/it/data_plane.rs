//! A picture's name never costs the picture, and one odd entry becomes one error row: a dataset
//! with accents, CJK, spaces, `#`, `%`, `?` and `[` in its folder and file names reads back in
//! full, locally and from the S3 server; one holding a symlink loop, a directory cycle, a
//! dangling symlink, a FIFO and a name that is not UTF-8 completes with an error row for each.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{cloakbench, cloakbench_exits, python_check, scratch, shared, text};

const NAMES: &[&str] = &[
    "Renée_Zoë/hash#1.jpg",
    "Renée_Zoë/percent%41.jpg",
    "Renée_Zoë/brackets[1].jpg",
    "名前 人/question?.jpg",
    "名前 人/ünïcødé_名前.jpg",
    "名前 人/with space.jpg",
];

/// Six real fixture photos under hostile names.
fn hostile_dataset(dir: &Path) {
    let fixture = shared("datasets/fixture_facescrub12x10");
    let photos: Vec<_> = std::fs::read_dir(fixture.join("Bill_Hader")).unwrap().map(|e| e.unwrap().path()).collect();
    for (name, photo) in NAMES.iter().zip(&photos) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(photo, &path).unwrap();
    }
}

fn pipeline(dir: &Path) -> String {
    let file = dir.join("ingest_embed.toml");
    std::fs::write(
        &file,
        "[pipeline]\nname = 'names'\n[stages.ingest]\nkind = 'ingest'\ndataset = 'set-me'\n[stages.embed]\nkind = 'embed'\nmodel = 'dlib_resnet29_150'\n",
    )
    .unwrap();
    file.display().to_string()
}

/// The images table's (rel_path, status, error) rows and the embeddings' count, by Polars.
fn read_back(run: &Path) -> String {
    let code = format!(
        "import polars as pl, json; d = {:?}; i = pl.read_parquet(f'{{d}}/images.parquet').sort('rel_path'); \
         print(json.dumps({{'rows': i.select('rel_path', 'status', 'error').rows(), 'embeddings': pl.read_parquet(f'{{d}}/embeddings.parquet').height}}))",
        run.display().to_string()
    );
    let out = std::process::Command::new(crate::python()).args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn special_characters_in_names_cost_no_picture_locally() {
    let dir = scratch("names-local");
    let data = dir.join("data");
    hostile_dataset(&data);
    let root = dir.join("runs");
    cloakbench(&["run", &pipeline(&dir), "--quiet", "--set", &format!("ingest.dataset={}", data.display()), "--run-root", root.to_str().unwrap()], &[]);
    let rows: serde_json::Value = serde_json::from_str(&read_back(&root.join("names"))).unwrap();
    assert_eq!(rows["embeddings"], NAMES.len(), "{rows}");
    for row in rows["rows"].as_array().unwrap() {
        assert_eq!(row[1], "ok", "{row}");
    }
    python_check("check_tables.py", &[root.join("names").to_str().unwrap(), "--expect-errors", "0"], &[]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn special_characters_in_names_cost_no_picture_on_s3() {
    let dir = scratch("names-s3");
    let data = dir.join("data");
    hostile_dataset(&data);
    let (_server, endpoint) = crate::s3::start_moto();
    let env = [
        ("AWS_ACCESS_KEY_ID", crate::s3::KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", crate::s3::SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    python_check("s3_helper.py", &["upload", &endpoint, "names", "data", data.to_str().unwrap()], &env);
    cloakbench(&["run", &pipeline(&dir), "--quiet", "--set", "ingest.dataset=s3://names/data", "--run-root", "s3://names/runs"], &env);
    let local = dir.join("back");
    python_check("s3_helper.py", &["download", &endpoint, "names", "runs/names", local.to_str().unwrap()], &env);
    let rows: serde_json::Value = serde_json::from_str(&read_back(&local)).unwrap();
    let paths: Vec<&str> = rows["rows"].as_array().unwrap().iter().map(|r| r[0].as_str().unwrap()).collect();
    let mut want: Vec<&str> = NAMES.to_vec();
    want.sort();
    assert_eq!(paths, want, "{rows}");
    assert!(rows["rows"].as_array().unwrap().iter().all(|r| r[1] == "ok"), "{rows}");
    assert_eq!(rows["embeddings"], NAMES.len(), "{rows}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn odd_entries_become_error_rows_and_the_run_completes() {
    let dir = scratch("names-odd");
    let data = dir.join("data");
    hostile_dataset(&data);
    let person = data.join("Renée_Zoë");
    std::os::unix::fs::symlink("loop", person.join("loop")).unwrap();
    std::os::unix::fs::symlink("..", person.join("up")).unwrap();
    std::os::unix::fs::symlink("nowhere.jpg", person.join("dangling.jpg")).unwrap();
    std::fs::write(person.join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe.jpg")), b"never read").unwrap();
    let fifo = std::ffi::CString::new(person.join("fifo.jpg").as_os_str().as_bytes()).unwrap();
    // SAFETY: a plain libc call on a path we own.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let root = dir.join("runs");
    let out = cloakbench_exits(&["run", &pipeline(&dir), "--set", &format!("ingest.dataset={}", data.display()), "--run-root", root.to_str().unwrap()], &[], 3);
    assert!(text(&out.stderr).contains("ingest: 5 failed"), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_str(&read_back(&root.join("names"))).unwrap();
    let reason = |rel: &str| -> String {
        let row = rows["rows"].as_array().unwrap().iter().find(|r| r[0] == rel).unwrap_or_else(|| panic!("no row for {rel}: {rows}"));
        assert_eq!(row[1], "error", "{row}");
        row[2].as_str().unwrap().to_owned()
    };
    assert!(reason("Renée_Zoë/loop").contains("symlink loop"));
    assert!(reason("Renée_Zoë/up").contains("directory cycle"));
    assert!(reason("Renée_Zoë/dangling.jpg").contains("dangling symlink"));
    assert!(reason("Renée_Zoë/bad\\xFF\\xFE.jpg").contains("not valid UTF-8"));
    assert!(reason("Renée_Zoë/fifo.jpg").contains("FIFO"));
    assert_eq!(rows["embeddings"], NAMES.len(), "every valid picture is embedded: {rows}");
    python_check("check_tables.py", &[root.join("names").to_str().unwrap(), "--expect-errors", "5"], &[]);
    std::fs::remove_dir_all(dir).ok();
}
