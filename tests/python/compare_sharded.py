"""Compares a sharded run's committed tables with a single-process run's, row for row.

Usage: compare_sharded.py SINGLE_RUN SHARDED_RUN [--tolerance T] [--urls URL_A URL_B]

SINGLE_RUN and SHARDED_RUN are local folders (an S3 run downloaded first: then --urls gives the
runs' own URLs, which the tables' paths start with).

Every table of SINGLE_RUN (`<table>.parquet`) must exist in SHARDED_RUN, either as one file or
through its manifest `<table>/_manifest.json` (read as users are told to in the README: the
listed parts, in order, in Polars; the same with Pandas, whose row count and columns must
agree). Rows are compared as sets (shards concatenate in shard order, a single run in listing
order), with every value equal; float columns within T (default 0: exactly). Paths inside a run
are compared relative to it, a shard's folder (`_shards/phase-P/shard-K/`) left out, and the
cloaked pictures they name byte for byte. Also checks the run's `_SUCCESS`. Prints a JSON summary;
exits non-zero naming the first difference.
"""
import json
import pathlib
import re
import sys

import pandas as pd
import polars as pl

TIMING_COLUMNS = {"seconds"}
SHARD_FOLDER = re.compile(r"_shards/phase-\d+/shard-\d+/")


def read_committed(run, table):
    """A table of a run, as the README says to read it: one file, or the parts its manifest lists."""
    single = run / f"{table}.parquet"
    if single.exists():
        return pl.read_parquet(single), pd.read_parquet(single)
    manifest = json.loads((run / table / "_manifest.json").read_text())
    parts = [str(run / p["key"]) for p in manifest["parts"]]
    df = pl.concat([pl.read_parquet(p) for p in parts], how="vertical")
    pdf = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    if df.height != manifest["rows"]:
        sys.exit(f"{table}: the manifest says {manifest['rows']} rows, its parts hold {df.height}")
    return df, pdf


def normalised(df, run, url=None):
    """Paths written as RUN/..., a shard's folder left out; timing columns dropped."""
    prefix = url or str(run.resolve())
    df = df.drop([c for c in df.columns if c in TIMING_COLUMNS])
    return df.with_columns(
        pl.col(c).str.replace(prefix, "RUN", literal=True).str.replace_all(SHARD_FOLDER.pattern, "") for c, t in df.schema.items() if t == pl.String
    )


def as_sorted_rows(df):
    return df.with_columns(_row=pl.struct(df.columns).hash(seed=0)).sort("_row").drop("_row")


def close(a, b, tolerance):
    if a.equals(b):
        return True
    if tolerance == 0 or a.columns != b.columns:
        return False
    for c in a.columns:
        if a[c].equals(b[c]):
            continue
        try:
            ea, eb = a[c].explode() if a[c].dtype.is_nested() else a[c], b[c].explode() if b[c].dtype.is_nested() else b[c]
            if not ea.dtype.is_float() or (ea - eb).abs().max() > tolerance:
                return False
        except Exception:
            return False
    return True


def main():
    single, sharded = (pathlib.Path(p) for p in sys.argv[1:3])
    tolerance = float(sys.argv[sys.argv.index("--tolerance") + 1]) if "--tolerance" in sys.argv else 0.0
    url_a, url_b = sys.argv[sys.argv.index("--urls") + 1:sys.argv.index("--urls") + 3] if "--urls" in sys.argv else (None, None)
    if not (sharded / "_SUCCESS").exists():
        sys.exit(f"{sharded}: no _SUCCESS: the run is not committed")
    tables = rows = pictures = 0
    for path in sorted(single.glob("*.parquet")):
        table = path.stem
        a = normalised(pl.read_parquet(path), single, url_a)
        b, b_pandas = read_committed(sharded, table)
        if b_pandas.shape != b.shape or list(b_pandas.columns) != b.columns:
            sys.exit(f"{table}: Pandas reads {b_pandas.shape}, Polars {b.shape}")
        b = normalised(b, sharded, url_b)
        if a.shape != b.shape:
            sys.exit(f"{table}: {a.shape} in the single run, {b.shape} sharded")
        # Rows keyed by everything but the floats, which are compared within the tolerance.
        keys = [c for c, t in a.schema.items() if not (t.is_float() or t.is_nested())]
        sa, sb = (df.sort(keys) if keys else as_sorted_rows(df) for df in (a, b))
        if not close(sa, sb, tolerance):
            differ = [c for c in sa.columns if not sa[c].equals(sb[c])]
            sys.exit(f"{table}: rows differ in {differ}:\n{sa}\n{sb}")
        tables += 1
        rows += a.height
    for rel in sorted(p.relative_to(single) for p in single.rglob("*") if p.is_file() and p.relative_to(single).parts[0] in ("cloaked", "filtered")):
        found = list(sharded.glob(f"_shards/phase-*/shard-*/{rel.as_posix()}"))
        if len(found) != 1:
            sys.exit(f"{rel}: {len(found)} copies in the sharded run's shards, expected 1")
        if found[0].read_bytes() != (single / rel).read_bytes():
            sys.exit(f"{rel}: the sharded run's picture differs")
        pictures += 1
    print(json.dumps({"tables": tables, "rows": rows, "pictures": pictures}))


if __name__ == "__main__":
    main()
