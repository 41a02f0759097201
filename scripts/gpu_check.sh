#!/usr/bin/env bash
# GPU check, for a machine with one CUDA GPU (about 8 minutes): the golden cases on CUDA, `bnnkit
# bench` on CUDA for resnet20/resnet18 (SiMaN, BiPer stage 1 and 2) against the float twin, and a
# 2-epoch CIFAR-10 training with the DALI GPU loader and with the torch loader; one summary table at
# the end. Without a GPU it says so and exits 0. Uses build/venv (made here with `make setup` when
# missing); installs the DALI extra for the DALI run. Exit status 1 when any step failed.
#   bash scripts/gpu_check.sh            (DATA=... for another CIFAR-10 copy, LOG=... for the logs' folder)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=build/venv/bin/python
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
LOG=${LOG:-build/gpu_check}
mkdir -p "$LOG"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU on this machine (nvidia-smi finds none): nothing to check"
    exit 0
fi
[ -x "$PY" ] || make setup >"$LOG/setup.txt" 2>&1 || { echo "gpu_check: make setup failed (see $LOG/setup.txt)"; exit 1; }
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: nvidia-smi sees a GPU but torch.cuda.is_available() is False: check the driver"; exit 1
fi
nvidia-smi -L
ROWS=()
failed=0
step() {  # step NAME FIGURE_COMMAND -- COMMAND...: runs COMMAND, logs it, records status, time and a figure
    local name=$1 figure=$2; shift 3
    local t0=$(date +%s) status=ok
    timeout 300 "$@" >"$LOG/$name.txt" 2>&1 || { status=FAILED; failed=1; }
    local fig; fig=$(bash -c "$figure" <"$LOG/$name.txt" 2>/dev/null | tail -1)
    ROWS+=("$(printf '%-22s %-7s %5ss  %s' "$name" "$status" "$(( $(date +%s) - t0 ))" "${fig:-see $LOG/$name.txt}")")
    echo "gpu_check: $name $status"
}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
step golden_cuda "grep -E 'passed|failed' | tail -1" -- \
    env BNNKIT_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_golden.py
step bench_cuda "grep -E '^resnet' | awk '{printf \"%s %s%s t %s ev %s; \", \$1, \$2, (\$3 ~ /^s/ ? \" \"\$3 : \"\"), \$(NF-6), \$(NF-3)}'" -- \
    "$PY" -m bnnkit bench --device cuda --models resnet20_1w1a resnet18_1w1a --methods siman biper --rounds 3 --profile never
COMMON=(--method siman --model resnet20_1w1a --data_path "$DATA" --subset 5000 --val_subset 1000 --epochs 2
        --device cuda --results_dir "$LOG/runs" --set tensorboard=false)
step train_torch_loader "grep -E 'best top-1' | tail -1" -- \
    "$PY" -m bnnkit train "${COMMON[@]}" --backend torch --save torch_loader
if build/venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dali]' >"$LOG/dali_install.txt" 2>&1; then
    step train_dali_gpu "grep -E 'best top-1' | tail -1" -- \
        "$PY" -m bnnkit train "${COMMON[@]}" --backend dali --save dali_loader
else
    ROWS+=("$(printf '%-22s %-7s %5ss  %s' train_dali_gpu FAILED 0 "DALI extra did not install: $LOG/dali_install.txt")"); failed=1
fi
echo
printf '%-22s %-7s %6s  %s\n' step status time "figure"
printf '%s\n' "${ROWS[@]}"
exit $failed
