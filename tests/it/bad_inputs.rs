//! Bad files in a dataset: each becomes an error row with its reason, the rest of the run
//! completes, and the dataset itself is left untouched.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{cloakbench_exits, copy_dataset, python_check, scratch, shared, text};

/// A PNG whose header claims 30000 x 30000 pixels (a decompression bomb's calling card).
fn huge_png_header() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // A tiny but valid zlib stream (one stored byte): real bombs compress gigabytes of zeros.
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(&[0x78, 0x01, 0x01, 0x01, 0x00, 0xFE, 0xFF, 0x00, 0x00, 0x01, 0x00, 0x01]);
    png.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc32(&idat).to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn tree_digest(dir: &Path) -> String {
    let mut files: Vec<_> = walk(dir);
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).unwrap());
    }
    format!("{:x}", h.finalize())
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
}

#[test]
fn every_bad_file_is_an_error_row_and_the_run_completes() {
    let fixture = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("bad-inputs");
    let data = dir.join("data");
    copy_dataset(&fixture, &data);
    let person = data.join("Bill_Hader");
    let a_jpeg = std::fs::read_dir(&person).unwrap().next().unwrap().unwrap().path();
    let jpeg = std::fs::read(&a_jpeg).unwrap();
    std::fs::write(person.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(person.join("empty.jpg"), b"").unwrap();
    std::fs::write(person.join("notes.jpg"), b"this is a text file, not a picture\n").unwrap();
    std::fs::write(person.join("bomb.png"), huge_png_header()).unwrap();
    let before = tree_digest(&data);

    let root = dir.join("runs");
    let set = format!("ingest.dataset={}", data.display());
    // The run completes, and its exit code says that some pictures failed.
    let out = cloakbench_exits(&["run", "pipelines/baseline.toml", "--quiet", "--set", &set, "--run-root", root.to_str().unwrap()], &[], 3);
    assert!(text(&out.stderr).contains("ingest: 4 failed"), "{}", text(&out.stderr));

    let out = python_check("check_tables.py", &[root.join("baseline").to_str().unwrap(), "--expect-errors", "4"], &[]);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["rows"]["images"], 124, "every file is a row");
    let errors = &summary["errors"];
    let reason = |f: &str| errors[format!("Bill_Hader/{f}")].as_str().unwrap_or_else(|| panic!("no error row for {f}: {errors}")).to_owned();
    assert!(reason("truncated.jpg").contains("truncated"), "{}", reason("truncated.jpg"));
    assert!(reason("empty.jpg").contains("empty file"));
    assert!(reason("notes.jpg").contains("not an image"));
    assert!(reason("bomb.png").contains("30000 x 30000"), "{}", reason("bomb.png"));
    assert_eq!(before, tree_digest(&data), "the dataset was modified");
    std::fs::remove_dir_all(dir).ok();
}
