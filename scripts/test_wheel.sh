#!/usr/bin/env bash
# Builds a wheel and an sdist of bnnkit, installs the wheel into a clean venv and runs it from a
# folder outside the source tree: `bnnkit --help`, then one batch of training on a few CIFAR-10
# images. The clean venv sees torch and the other dependencies of build/venv through a path file
# (a second copy of torch would cost 5.6 GB and minutes); `pip check` there proves that those
# versions satisfy the wheel's declared ranges. The sdist is built too and its native kernels
# compiled from it. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_PY=$ROOT/build/venv/bin/python
DATA=${DATA:-$ROOT/../shared/data/cifar10-jpeg.tar.gz}
OUT=$ROOT/build/dist
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -rf "$OUT" && mkdir -p "$OUT"
start=$(date +%s)

echo "test-wheel: building the wheel and the sdist"
"$VENV_PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$OUT" .
"$VENV_PY" setup.py -q sdist -d "$OUT" >/dev/null 2>&1
wheel=$(ls "$OUT"/bnnkit-*.whl)
sdist=$(ls "$OUT"/bnnkit-*.tar.gz)
tar -tzf "$sdist" > "$WORK/sdist.txt"
grep -q "csrc/bnn_module.cpp" "$WORK/sdist.txt" || { echo "test-wheel: the sdist lacks csrc/" >&2; exit 1; }
"$VENV_PY" -m zipfile -l "$wheel" > "$WORK/wheel.txt"
grep -q "bnnkit/native/_ext" "$WORK/wheel.txt" || { echo "test-wheel: the wheel lacks the native kernels" >&2; exit 1; }

echo "test-wheel: installing $(basename "$wheel") into a clean venv"
python3.11 -m venv "$WORK/venv"
site=$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$VENV_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$site/zz_dependencies.pth"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps "$wheel"
"$WORK/venv/bin/python" -m pip check --disable-pip-version-check | grep -iv "^no broken" | grep -i "bnnkit" && {
    echo "test-wheel: the installed dependencies do not satisfy bnnkit's requirements" >&2; exit 1; } || true

cd "$WORK"  # outside the source tree: only the installed wheel is importable
where=$("$WORK/venv/bin/python" -c "import bnnkit, bnnkit.native.kernels as k; k.lib(); print(bnnkit.__file__)")
case "$where" in "$WORK"/venv/*) ;; *) echo "test-wheel: bnnkit imported from $where, not the wheel" >&2; exit 1 ;; esac
"$WORK/venv/bin/bnnkit" --help > "$WORK/help.txt"
grep -q "train" "$WORK/help.txt"
"$WORK/venv/bin/bnnkit" train --method siman --model resnet20_1w1a --data_path "$DATA" --subset 32 --val_subset 32 \
    -b 32 -bt 32 --epochs 1 --workers 0 --threads 2 --results_dir "$WORK/results" --save one_batch \
    --set tensorboard=false > "$WORK/train.txt" 2>&1 || { cat "$WORK/train.txt" >&2; exit 1; }
grep -q "best top-1" "$WORK/train.txt"
test -f "$WORK/results/one_batch/last.pt"

echo "test-wheel: the native kernels build from the sdist"
mkdir -p "$WORK/sdist" && tar -xzf "$sdist" -C "$WORK/sdist"
(cd "$WORK"/sdist/bnnkit-* && "$VENV_PY" setup.py -q build_ext -b "$WORK/sdist-build" >/dev/null 2>&1)
ls "$WORK"/sdist-build/bnnkit/native/_ext*.so >/dev/null
echo "test-wheel: ok ($(( $(date +%s) - start )) s): wheel installed and ran bnnkit --help and a one-batch training outside the tree; sdist built its kernels"
