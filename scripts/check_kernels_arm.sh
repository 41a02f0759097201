#!/usr/bin/env bash
# The native kernels' ISA paths, bit for bit, on this machine and on AArch64 (#25): builds
# csrc/tests/kernel_check natively (portable + this CPU's paths) and cross-compiled for AArch64
# (portable + NEON, -static, so qemu needs no sysroot), runs the first here and the second under
# qemu-aarch64, and checks that both machines give the same results (every case's result hash and
# every sum). Exits non-zero on any difference or missing tool. Nothing is timed: qemu's speed
# says nothing about an ARM CPU's.
#
# usage: scripts/check_kernels_arm.sh [build-dir]   (default: a fresh temporary directory)
# env:   CXX (native compiler, g++), AARCH64_CXX (aarch64-linux-gnu-g++), QEMU_AARCH64 (qemu-aarch64),
#        KERNEL_CHECK_SEED (25)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cxx=${CXX:-g++}
cross=${AARCH64_CXX:-aarch64-linux-gnu-g++}
qemu=${QEMU_AARCH64:-qemu-aarch64}
seed=${KERNEL_CHECK_SEED:-25}

for tool in "$cxx" "$cross" "$qemu"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool not found; install the AArch64 cross compiler and qemu-user" \
             "(Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu qemu-user)" >&2
        exit 2
    fi
done

out=${1:-$(mktemp -d)}
mkdir -p "$out"
flags=(-O2 -std=c++17 -fno-strict-aliasing -ffp-contract=off -Wall -Wno-maybe-uninitialized -Wno-uninitialized
       -I"$root/csrc")
check="$root/csrc/tests/kernel_check.cpp"
case "$(uname -m)" in
    x86_64) native=(bnn_portable bnn_avx2 bnn_avx512) ;;
    aarch64|arm64) native=(bnn_portable bnn_neon) ;;
    *) native=(bnn_portable) ;;
esac
arm=(bnn_portable bnn_neon)

# one object a job, two at a time (compiling dominates the run)
jobs_file="$out/jobs.txt"
: >"$jobs_file"
echo "$cxx native/kernel_check $check" >>"$jobs_file"
for f in "${native[@]}"; do echo "$cxx native/$f $root/csrc/$f.cpp" >>"$jobs_file"; done
echo "$cross arm/kernel_check $check" >>"$jobs_file"
for f in "${arm[@]}"; do echo "$cross arm/$f $root/csrc/$f.cpp" >>"$jobs_file"; done
mkdir -p "$out/native" "$out/arm"
compile() {  # compiler object source
    "$1" "${flags[@]}" -c "$3" -o "$out/$2.o" 2>"$out/$2.log" || { cat "$out/$2.log" >&2; return 1; }
}
pids=()
while read -r comp obj src; do
    compile "$comp" "$obj" "$src" &
    pids+=($!)
    if (( ${#pids[@]} >= 2 )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done <"$jobs_file"
for p in "${pids[@]}"; do wait "$p"; done

"$cxx" "$out"/native/*.o -o "$out/kernel_check_native"
"$cross" -static "$out"/arm/*.o -o "$out/kernel_check_aarch64"

status=0
echo "== native ($(uname -m))"
"$out/kernel_check_native" "$seed" | tee "$out/native.txt" || status=1
echo "== aarch64 under $qemu"
"$qemu" "$out/kernel_check_aarch64" "$seed" | tee "$out/aarch64.txt" || status=1

# the same cases must give the same results on both machines (only the ISA lists differ)
results() { grep -E '^(sums|bconv|pack) ' "$1" | sed -E 's/, same in .*//; s/, [0-9]+\/[0-9]+ ISAs .*//; s/: (ok|DIFFERENT)$//'; }
if ! diff <(results "$out/native.txt") <(results "$out/aarch64.txt") >"$out/cross.diff"; then
    echo "FAIL: the AArch64 results differ from the native ones:" >&2
    head -20 "$out/cross.diff" >&2
    status=1
else
    echo "== native and aarch64: $(results "$out/native.txt" | wc -l) cases with the same results"
fi
exit $status
