#!/usr/bin/env bash
# Runs a pipeline as a Slurm array of shards, then commits it: plan, submit the array and wait
# for it (requeued tasks included), commit; when the commit says the next phase's shards are
# due (exit 5: a stage that needs the whole dataset, such as the split, ran in between), submit
# the array again. The launcher, not an `afterok` dependency, triggers the commit: `afterok`
# never fires once a task of the array has failed, even if its requeue then succeeded.
#
# Usage: launch.sh PIPELINE SHARDS [cloakbench args: --set K=V ... --run-root URL]
# Environment: CLOAKBENCH (the binary; default cloakbench on PATH), CLOAKBENCH_GRES (default
# gpu:1; empty: no GPU), CLOAKBENCH_MAX_REQUEUES (default 3), SBATCH_ARGS (more sbatch options,
# such as "--partition=gpu --time=02:00:00"). The tasks inherit this environment (S3
# credentials included: they are never written into the job script).
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
PIPELINE=$1
SHARDS=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
CLOAKBENCH=${CLOAKBENCH:-cloakbench}
GRES=${CLOAKBENCH_GRES-gpu:1}
LOGS=${CLOAKBENCH_SLURM_LOGS:-slurm-logs}
mkdir -p "$LOGS"
say() { echo "[launch] $*" >&2; }

"$CLOAKBENCH" plan "$PIPELINE" --shards "$SHARDS" "$@"
for phase in $(seq 0 100); do
    # shellcheck disable=SC2086
    sbatch --wait --quiet --array="0-$((SHARDS - 1))" ${GRES:+--gres=$GRES} \
        --output="$LOGS/%A_%a.log" ${SBATCH_ARGS:-} "$HERE/shard.sbatch" "$PIPELINE" "$@" >&2 \
        || say "the array ended with failed tasks; the commit names any shard that is not done"
    set +e
    "$CLOAKBENCH" commit "$PIPELINE" "$@"
    rc=$?
    set -e
    case $rc in
        0) say "committed after $((phase + 1)) array(s)"; exit 0 ;;
        5) say "phase $phase committed; submitting the next phase's shards" ;;
        *) say "commit failed (exit $rc)"; exit "$rc" ;;
    esac
done
