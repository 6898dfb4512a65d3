#!/usr/bin/env bash
# One short GPU session, as one command: install (no network), the `gpu` tests, then `mfu check`,
# each step time-boxed, with everything packed into $OUT after every step and a short table last.
#
#   OUT=/some/dir bash tools/gpu_session.sh            # on the GPU machine (budget about 8.5 min)
#   OUT=/tmp/x DEVICE=cpu bash tools/gpu_session.sh    # the same plumbing on a CPU, to try it
#
# TESTS_S and CHECK_S set the two time boxes (seconds). The harness writes what finished when a
# step is interrupted (SIGINT), so a step cut short still leaves its results in the pack.
set -uo pipefail
OUT=${OUT:?set OUT to the folder to write into}
DEVICE=${DEVICE:-cuda}
TESTS_S=${TESTS_S:-150}
CHECK_S=${CHECK_S:-330}
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

echo
echo "step        exit  seconds"
while read -r name code took; do printf '%-11s %4s  %7s\n' "$name" "$code" "$took"; done < "$WORK/steps.txt"
tail -n 12 "$WORK/check.log" 2>/dev/null
grep -E "passed|failed" "$WORK/gpu-tests.log" 2>/dev/null | tail -n 1
