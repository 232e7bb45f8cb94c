"""Reads a run's tables back with Polars and Pandas and checks them against schemas/*.toml.

Usage: check_tables.py RUN_DIR [--expect-errors N]
(a folder with only a `bench` table, as `cloakbench bench` writes, gets that table's checks)

Checks every Parquet file of the run against the schema its `cloakbench.table` metadata names
(so renamed and fanned-out tables are covered too; a file naming no schema is an error): the
exact column names and order, each column's type, no nulls in non-nullable columns, and that
Pandas (pyarrow engine) sees the same rows. Then checks
the invariants that tie the tables together (ids unique, the split disjoint, one embedding per
decodable picture). Prints a JSON summary on stdout: row counts, overall accuracy per
(classifier, model), and the error reason of every refused file.
"""
import json
import math
import pathlib
import sys
import tomllib

import pandas as pd
import polars as pl
import pyarrow.parquet as pq

REPO = pathlib.Path(__file__).resolve().parents[2]
POLARS_TYPES = {
    "utf8": pl.String, "bool": pl.Boolean, "uint8": pl.UInt8, "int32": pl.Int32, "uint32": pl.UInt32,
    "int64": pl.Int64, "uint64": pl.UInt64, "float32": pl.Float32, "float64": pl.Float64,
}


def check_schema(name, df, schema):
    names = [c["name"] for c in schema["columns"]]
    assert df.columns == names, f"{name}: columns {df.columns} != documented {names}"
    for col in schema["columns"]:
        dtype = df.schema[col["name"]]
        if col["type"].startswith("fixed_size_list<float32"):
            assert isinstance(dtype, pl.Array) and dtype.inner == pl.Float32, f"{name}.{col['name']}: {dtype}"
            if col["type"] != "fixed_size_list<float32>":
                assert dtype.size == int(col["type"].split(",")[1].strip(" >")), f"{name}.{col['name']}: {dtype}"
        else:
            assert dtype == POLARS_TYPES[col["type"]], f"{name}.{col['name']}: {dtype} != {col['type']}"
        if not col["nullable"]:
            assert df[col["name"]].null_count() == 0, f"{name}.{col['name']}: nulls in a non-null column"


def load_schemas():
    """Every schema of schemas/, with the columns of the one it is based on first."""
    raw = {s["table"]: s for s in (tomllib.loads(p.read_text()) for p in sorted((REPO / "schemas").glob("*.toml")))}
    for s in raw.values():
        base = raw[s["based_on"]]["columns"] if "based_on" in s else []
        s["all_columns"] = base + s["columns"]
    return raw


def main():
    run = pathlib.Path(sys.argv[1])
    expect_errors = int(sys.argv[sys.argv.index("--expect-errors") + 1]) if "--expect-errors" in sys.argv else None
    schemas = load_schemas()
    # Every table of the run, whatever its name (embeddings-<model>, scraped_faces, ...), is
    # checked against the schema its file names; files keep their own name in `files`.
    tables, files, embeddings, schemas_of = {}, {}, [], {}
    for file in sorted(run.glob("*.parquet")):
        meta = pq.read_schema(file).metadata or {}
        name = meta.get(b"cloakbench.table", b"").decode()
        assert name in schemas, f"{file}: names no documented schema (cloakbench.table = {name!r})"
        df = pl.read_parquet(file)
        check_schema(file.stem, df, {"columns": schemas[name]["all_columns"]})
        pdf = pd.read_parquet(file)
        assert list(pdf.columns) == df.columns and len(pdf) == len(df), f"{file}: pandas disagrees"
        files[file.stem] = df
        schemas_of[file.stem] = name
        if file.stem == name:
            tables[name] = df
        if name == "embeddings":
            embeddings.append(df)
    if "bench" in tables and "images" not in tables:
        bench = tables["bench"]
        with_ref = bench.filter(pl.col("reference").is_not_null())
        assert bench["ratio"].is_null().equals(bench["reference"].is_null()), "a ratio without a reference, or the reverse"
        assert ((with_ref["ratio"] - with_ref["value"] / with_ref["reference"]).abs() < 1e-9).all(), "ratio is not value / reference"
        assert (bench["value"] > 0).all() and bench["value"].is_finite().all(), "a figure that is not a positive number"
        print(json.dumps({"rows": {k: len(v) for k, v in files.items()}, "metrics": sorted(set(bench["metric"]))}))
        return
    assert "images" in tables, f"no images table in {run}"
    images = tables["images"]
    assert images["image_id"].n_unique() == len(images), "duplicate image ids"
    assert set(images["status"]) <= {"ok", "error"}
    ok = images.filter(pl.col("status") == "ok")
    bad = images.filter(pl.col("status") == "error")
    assert ok["error"].null_count() == len(ok) and bad["error"].null_count() == 0, "error column disagrees with status"
    if expect_errors is not None:
        assert len(bad) == expect_errors, f"{len(bad)} error rows, expected {expect_errors}: {bad.select('rel_path', 'error').rows()}"

    for name, df in files.items():
        if schemas_of.get(name) in ("cloaked_images", "filtered_images"):
            assert df["image_id"].sort().to_list() == images["image_id"].sort().to_list(), f"{name}: not the same pictures as images"
            assert set(df["original_uri"]) <= set(images["uri"]), f"{name}: original_uri outside the dataset"
    if "faces" in tables:
        faces = tables["faces"]
        assert set(faces["image_id"]) == set(ok["image_id"]), "faces does not account for exactly the decodable pictures"
        assert set(faces["status"]) <= {"face", "no_face", "error"}
        assert ((faces["status"] == "face") == faces["face_index"].is_not_null()).all(), "face_index null exactly off faces"
        assert faces.filter(pl.col("status") != "face")["image_id"].n_unique() == len(faces.filter(pl.col("status") != "face"))
        assert faces.filter(pl.col("status") == "face").select("image_id", "face_index").is_unique().all()
    if "splits" not in tables:
        print(json.dumps({"rows": {k: len(v) for k, v in files.items()}, "errors": dict(bad.select("rel_path", "error").rows())}))
        return
    splits = tables["splits"]
    if not embeddings or "predictions" not in tables:
        print(json.dumps({"rows": {k: len(v) for k, v in files.items()}, "errors": dict(bad.select("rel_path", "error").rows())}))
        return
    assert splits["image_id"].n_unique() == len(splits), "a picture is in the split twice"
    assert set(splits["image_id"]) == set(ok["image_id"]), "split does not cover exactly the decodable pictures"
    per_identity = splits.group_by("identity").agg(pl.col("split").n_unique().alias("sides"))
    assert per_identity["sides"].min() == 2, "an identity lacks a train or a test picture"

    for model, group in (g for emb in embeddings for g in emb.group_by("model")):
        assert set(group["image_id"]) == set(ok["image_id"]), f"{model}: embeddings do not cover the decodable pictures"
        values = group["embedding"].to_numpy()
        assert all(math.isfinite(v) for v in values.ravel()), f"{model}: non-finite embedding values"

    test_ids = set(splits.filter((pl.col("split") == "test") & (pl.col("role") != "public"))["image_id"])
    assert set(tables["predictions"]["image_id"]) == test_ids, "predictions are not exactly the test pictures"

    metrics = tables["metrics"]
    overall = metrics.filter(pl.col("identity").is_null())
    assert ((metrics["accuracy"] >= 0) & (metrics["accuracy"] <= 1)).all()
    print(json.dumps({
        "rows": {k: len(v) for k, v in files.items()},
        "accuracy": {f"{r['classifier']}/{r['model']}": r["accuracy"] for r in overall.iter_rows(named=True)},
        "errors": dict(bad.select("rel_path", "error").rows()),
        "uris": images["uri"].head(3).to_list(),
    }))


if __name__ == "__main__":
    main()
