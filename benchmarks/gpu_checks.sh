#!/usr/bin/env bash
# Every standing GPU check in one command, for a session that is lent a CUDA machine (15 minutes of device
# time, all tries together): each check runs under its own time limit, a failing one does not stop the
# others, and every table lands in benchmarks/results/ (and in $OUT too, when the device tool sets it).
#
#   bash benchmarks/gpu_checks.sh            # all checks (about 8 minutes on an H200)
#   CHECKS="wkv inference" bash benchmarks/gpu_checks.sh
#
# Runs from the tree (PYTHONPATH=.) with the machine's own torch/triton/transformers; fla-core for the wkv
# speed anchor is optional (carried as wheels: see the device README). A check added to the repository
# (training step, wkv7, ...) belongs here too.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CHECKS="${CHECKS:-wkv inference tests}"
status=0
marker=$(mktemp)

check() {  # check NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    case " $CHECKS " in *" $name "*) ;; *) return 0 ;; esac
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    if timeout "$limit" "$@"; then
        echo "=== $name done in $((SECONDS - t0))s"
    else
        echo "=== $name FAILED (exit $?) after $((SECONDS - t0))s"
        status=1
    fi
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)" || exit 2
check wkv 240 bash benchmarks/wkv_gpu_check.sh
check inference 300 "$PY" benchmarks/inference.py --device cuda --dtype bf16 --preset 1b6
check tests 120 "$PY" -m pytest -q -m gpu tests

if [ -n "${OUT:-}" ]; then
    find benchmarks/results -newer "$marker" -type f -exec cp {} "$OUT"/ \; 2>/dev/null  # what this run wrote
    ls -l "$OUT"
fi
exit $status
