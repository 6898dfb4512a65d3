#!/usr/bin/env bash
# One short GPU session, as one command: install (no network), the `gpu` tests, `mfu check`, then
# the distributed path on every GPU there is (torchrun, NCCL; one GPU measures no interconnect),
# each step time-boxed, with everything packed into $OUT after every step and a short table last.
#
#   OUT=/some/dir bash tools/gpu_session.sh            # on the GPU machine (budget about 8.5 min)
#   OUT=/tmp/x DEVICE=cpu bash tools/gpu_session.sh    # the same plumbing on a CPU, to try it
#
# TESTS_S, CHECK_S and RANKS_S set the time boxes (seconds). The harness writes what finished when a
# step is interrupted (SIGINT), so a step cut short still leaves its results in the pack.
set -uo pipefail
OUT=${OUT:?set OUT to the folder to write into}
DEVICE=${DEVICE:-cuda}
TESTS_S=${TESTS_S:-140}
CHECK_S=${CHECK_S:-285}
RANKS_S=${RANKS_S:-75}
NPROC=${NPROC:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)}
WORK=$OUT/session
mkdir -p "$WORK"
export MFU_HOME=$WORK/mfu-home  # a fresh device store: this session's ceilings only

pack() { tar -czf "$OUT/session.tgz" -C "$OUT" session 2>/dev/null; }
step() {  # step NAME SECONDS COMMAND...: time-boxed, logged, exit code recorded
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout -s INT -k 30 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local code=$?
  echo "$name $code $((SECONDS - started))" >> "$WORK/steps.txt"
  pack
}

{ nvidia-smi || true; python -c "import torch, triton; print(torch.__version__, triton.__version__)"; } \
  > "$WORK/env.txt" 2>&1
step install 120 pip install --no-deps --no-build-isolation -e .
if [ "$DEVICE" = cuda ]; then
  step gpu-tests "$TESTS_S" python -m pytest -m gpu -q -x --durations=20 -p no:cacheprovider
fi
step check "$CHECK_S" mfu check --device "$DEVICE" --out "$WORK/check" --budget-s $((CHECK_S - 30))
# Every collective at 1 MiB and 256 MiB, one GEMM on every GPU at once (a straggler check), and the
# tensor- and expert-parallel layers over every GPU (compute only on one).
cat > "$WORK/ranks.yaml" <<'YAML'
suite: ranks
timing: {warmup_ms: 25, min_samples: 10, max_time_s: 0.3, rel_ci: 0.01, l2_flush: false}
cases:
  - workload: comm
    op: [all_reduce, all_gather, reduce_scatter, all_to_all, broadcast, send_recv]
    size: [1048576, 268435456]
    dtype: [bf16, fp32]
  - workload: gemm
    m: 8192
    n: 8192
    k: 8192
    dtype: bf16
    backends: [torch]
  - workload: tp-linear
    model: llama3-70b
    tokens: 8192
    dtype: bf16
    backends: [torch]
  - workload: ep-moe
    model: qwen3-30b-a3b
    tokens: 4096
    dtype: bf16
    backends: [torch-grouped]
YAML
step ranks "$RANKS_S" mfu run "$WORK/ranks.yaml" --device "$DEVICE" --nproc "$NPROC" --out "$WORK/ranks"

echo
echo "step        exit  seconds"
while read -r name code took; do printf '%-11s %4s  %7s\n' "$name" "$code" "$took"; done < "$WORK/steps.txt"
tail -n 12 "$WORK/check.log" 2>/dev/null
grep -E "^rank|busbw|straggler|compute" "$WORK/ranks.log" 2>/dev/null | tail -n 8
grep -E "passed|failed" "$WORK/gpu-tests.log" 2>/dev/null | tail -n 1
