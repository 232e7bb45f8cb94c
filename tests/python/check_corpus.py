"""Checks a run over the generated bad-input corpus (make_bad_corpus.py) against its expectations.

Usage: check_corpus.py RUN_DIR EXPECTED_JSON folders|manifest

Every entry expected "ok" or "error" has exactly that row in `images` (the row's uri names the
file; an error row has a reason); every "skip" is named among the ingest stage's skipped items
in `_run.json`; no row is unexpected. For a folder run that went further: every ok picture has
a detection row, every protected training picture with a face was cloaked within its budget, and every
ok picture has an embedding. Prints a JSON summary.
"""
import json
import pathlib
import sys

import polars as pl


def main():
    run, expected_file, which = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
    expected = json.loads(expected_file.read_text())[which]
    images = pl.read_parquet(run / "images.parquet")
    rows = {}
    for r in images.iter_rows(named=True):
        # A bad manifest row is keyed by its row number too (`path#manifest-row-7`).
        rows.setdefault(r["rel_path"].split("#manifest-row-")[0], []).append(r)
    problems = []
    for r in images.iter_rows(named=True):
        if not r["uri"].endswith(r["rel_path"]):
            problems.append(f"{r['rel_path']!r}: uri {r['uri']!r} does not name the file")
        if r["status"] == "error" and not r["error"]:
            problems.append(f"{r['rel_path']!r}: error row without a reason")
    manifest = json.loads((run / "_run.json").read_text())
    ingest = next(s for s in manifest["stages"] if s["kind"] == "ingest")
    skipped = ingest["tally"]["skipped"]
    for key, want in expected.items():
        got = sorted(r["status"] for r in rows.get(key, []))
        if want == "skip" or want == ["skip"]:
            if got or not any(key in example for example in skipped["examples"]):
                problems.append(f"{key!r}: expected skipped and named, got rows {got}")
            continue
        want = sorted(want) if isinstance(want, list) else [want]
        if got != want:
            problems.append(f"{key!r}: expected {want}, got {got}: {[r['error'] for r in rows.get(key, [])]}")
    for key in rows.keys() - expected.keys():
        problems.append(f"{key!r}: unexpected row")
    skips = sum(v == "skip" for v in expected.values())
    if skipped["n"] != skips:
        problems.append(f"{skipped['n']} skipped, expected {skips}: {skipped['examples']}")
    summary = {"rows": images.height, "ok": images.filter(pl.col("status") == "ok").height,
               "errors": images.filter(pl.col("status") == "error").height, "skipped": skipped["n"]}

    ok_ids = set(images.filter(pl.col("status") == "ok")["image_id"])
    if (run / "faces.parquet").exists():
        faces = pl.read_parquet(run / "faces.parquet")
        missing = ok_ids - set(faces["image_id"])
        if missing:
            problems.append(f"{len(missing)} ok pictures without a detection row")
        faceless = faces.filter(pl.col("status") == "no_face")["image_id"].implode()
        summary["faceless"] = sorted(images.filter(pl.col("image_id").is_in(faceless))["rel_path"])
    if (run / "cloaks.parquet").exists():
        cloaks = pl.read_parquet(run / "cloaks.parquet")
        summary["cloaked_faces"] = cloaks.height
        if not cloaks["within_budget"].all():
            problems.append(f"cloaks over their budget: {cloaks.filter(~pl.col('within_budget'))}")
        summary["cloaked_pictures"] = sorted(images.filter(pl.col("image_id").is_in(cloaks["image_id"].implode()))["rel_path"])
        splits = pl.read_parquet(run / "splits.parquet")
        with_face = faces.filter(pl.col("status") == "face")["image_id"].implode()
        to_cloak = splits.filter(pl.col("protected") & (pl.col("split") == "train") & pl.col("image_id").is_in(with_face))
        if set(to_cloak["image_id"]) != set(cloaks["image_id"]):
            problems.append(f"cloaked {summary['cloaked_pictures']}, but the protected training pictures with a face are {to_cloak}")
    if (run / "embeddings.parquet").exists():
        embedded = set(pl.read_parquet(run / "embeddings.parquet")["image_id"])
        missing = ok_ids - embedded
        if missing:
            problems.append(f"{len(missing)} ok pictures without an embedding")
        summary["embedded"] = len(embedded)
    print(json.dumps(summary))
    if problems:
        sys.exit("\n".join(problems))


if __name__ == "__main__":
    main()
