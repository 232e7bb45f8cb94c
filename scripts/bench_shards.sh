#!/usr/bin/env bash
# The sharded-run benchmark (a run, not a test: minutes): SHARDS shards (default 100) of
# pipelines/baseline.toml over lfw158 (4,324 pictures) as a Slurm array on the local
# single-node Slurm of tests/slurm/start.sh, with FAIL_EVERY-th shard (default every 20th: 5%)
# SIGKILLed a second into its first attempt and requeued, against one process on the same
# machine. Prints the wall times, the overhead per shard and whether the tables are equal.
#
# Usage: scripts/bench_shards.sh   (SHARDS=100 FAIL_EVERY=20 DATASET=... OUT=runs/bench/shards)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:?run through make (it sets CARGO_TARGET_DIR)}/release/cloakbench
SHARDS=${SHARDS:-100}
FAIL_EVERY=${FAIL_EVERY:-20}
DATASET=$(cd "${DATASET:-../shared/datasets/lfw158}" && pwd)
OUT=$ROOT/${OUT:-runs/bench/shards}
PIPELINE=pipelines/baseline.toml
SLURM_CONF=$(tests/slurm/start.sh)
export SLURM_CONF
rm -rf "$OUT" && mkdir -p "$OUT"
now() { date +%s.%N; }

t0=$(now)
"$BIN" run "$PIPELINE" --set ingest.dataset="$DATASET" --run-root "$OUT/single" -q >/dev/null
t1=$(now)

cat >"$OUT/crash-once.sh" <<WRAP
#!/usr/bin/env bash
k=\${SLURM_ARRAY_TASK_ID:-0}
if [ "\$1" = run ] && [ \$((k % $FAIL_EVERY)) = 7 ] && mkdir "$OUT/crashed-\$k" 2>/dev/null; then
    "$BIN" "\$@" & pid=\$!; sleep 1; kill -9 \$pid; wait \$pid; exit \$?
fi
exec "$BIN" "\$@"
WRAP
chmod +x "$OUT/crash-once.sh"
t2=$(now)
CLOAKBENCH=$OUT/crash-once.sh CLOAKBENCH_GRES= CLOAKBENCH_SLURM_LOGS=$OUT/logs \
    scripts/launch/slurm/launch.sh "$PIPELINE" "$SHARDS" --set ingest.dataset="$DATASET" --run-root "$OUT/sharded" -q >/dev/null
t3=$(now)

same=$(.venv/bin/python tests/python/compare_sharded.py "$OUT/single/baseline" "$OUT/sharded/baseline")
requeued=$(cat "$OUT"/logs/* | grep -c "requeued (attempt 1" || true)
.venv/bin/python - "$OUT" "$t0" "$t1" "$t2" "$t3" "$SHARDS" "$requeued" "$same" "$(nproc)" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1]); t0, t1, t2, t3 = map(float, sys.argv[2:6])
shards, requeued, same, cores = int(sys.argv[6]), int(sys.argv[7]), json.loads(sys.argv[8]), int(sys.argv[9])
single = json.loads((out / "single/baseline/_run.json").read_text())
per_picture = {"ingest", "embed"}
single_work = sum(s["seconds"] for s in single["stages"] if s["name"] in per_picture)
markers = [json.loads(p.read_text()) for p in (out / "sharded/baseline/_shards/phase-0").glob("shard-*.json")]
shard_work = sum(m["seconds"] for m in markers)
print(f"sharded run: {shards} shards of lfw158 on a {cores}-CPU single-node Slurm, {requeued} shards SIGKILLed once and requeued")
print(f"  single process       {t1 - t0:7.1f} s wall ({single_work:.1f} s in ingest + embed)")
print(f"  Slurm array + commit {t3 - t2:7.1f} s wall ({(t3 - t2) / (t1 - t0):.2f}x the single process)")
print(f"  shard work           {shard_work:7.1f} s on one CPU each, summed over the {len(markers)} shards' last attempts "
      f"(the single process: {single_work:.1f} s on {cores} CPUs)")
print(f"  overhead per shard   {((t3 - t2) - (t1 - t0)) * cores / shards:7.2f} CPU-seconds ({cores} one-CPU task slots): "
      "the extra wall time x slots / shards, requeues and scheduling included")
print(f"  tables equal         {same['tables']} tables, {same['rows']} rows")
PY
