#!/usr/bin/env bash
# CI: keep the asv suite alive.  Small sizes (PINN_NG_BENCH_QUICK=1, see bench/_cases.py), each
# benchmark run once (asv --quick: results are not saved).  Exits non-zero if discovery or any
# benchmark (or any parameter combination of one) fails.  About 2 minutes on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."

export PINN_NG_BENCH_QUICK=1
# asv runs every benchmark in a fresh process, whose setup compiles again: JAX's persistent
# compilation cache (keyed by the HLO and the JAX version, git-ignored under .asv/) makes the
# time_/track_/peakmem_ setups of one function compile it once.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.asv/jax-cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

asv machine --yes
asv check --python=same

# asv 0.6.6 has no --strict: `asv check`/`asv run` exit 1 when the suite cannot be imported,
# and `asv run` exits 2 when any benchmark, or any parameter combination of one, fails
# (verified).  The scan of asv's status lines ("[ 42%] ··· name   1/2 failed") is a second
# guard in case a future asv reports a failure in its output only.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
asv run --quick --python=same --show-stderr 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ] || grep -Eq '^\[ *[0-9.]+%\] ·+ .*failed[[:space:]]*$' "$log"; then
    echo "bench/ci_asv.sh: asv benchmark failure (asv run exit code $rc)" >&2
    exit 1
fi
echo "bench/ci_asv.sh: all asv benchmarks ran"
