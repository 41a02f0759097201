#!/usr/bin/env bash
# Quickstart: train SiMaN ResNet-20 (recipes/cifar10/siman_resnet20.yaml) for ONE epoch on the full
# CIFAR-10 and print its validation top-1. Uses the local copy ../shared/data/cifar10-jpeg.tar.gz when
# it exists; otherwise downloads CIFAR-10 into data/ (needs the internet). Run from anywhere:
#   bash scripts/quickstart.sh            (PYTHON=... to choose the interpreter, RESULTS=... the output root)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x build/venv/bin/python ] && echo build/venv/bin/python || echo python3 )}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
EXTRA=()
if [ ! -e "$DATA" ]; then DATA=data/cifar10; EXTRA=(--download); fi
RUN=quickstart_$(date +%Y%m%d_%H%M%S)
start=$(date +%s)
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -m bnnkit train recipes/cifar10/siman_resnet20.yaml \
    --data_path "$DATA" "${EXTRA[@]}" --epochs 1 --results_dir "${RESULTS:-results}" --save "$RUN"
echo "quickstart: 1 epoch of SiMaN resnet20_1w1a on CIFAR-10 in $(( $(date +%s) - start )) s; per-epoch metrics in ${RESULTS:-results}/$RUN/metrics.csv"
