#!/usr/bin/env bash
# Fuzzes libbnn's loader and runner (runtime/fuzz/fuzz_load.cpp) with libFuzzer, AddressSanitizer
# and UBSan for SECONDS (default 60), single process, seeded with small models exported by bnnkit.
# Exits non-zero on any crash, leak, sanitizer report, timeout or out-of-memory.
#   scripts/fuzz_libbnn.sh [SECONDS]      env: CXX (clang++), PYTHON, FUZZ_DIR (build/fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-60}
CXX=${CXX:-clang++}
PYTHON=${PYTHON:-build/venv/bin/python}
OUT=${FUZZ_DIR:-build/fuzz}
mkdir -p "$OUT/obj" "$OUT/corpus" "$OUT/artifacts"

command -v "$CXX" >/dev/null || { echo "error: $CXX not found; install clang (libFuzzer) or set CXX" >&2; exit 2; }
SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
# no -fopenmp: clang has no libomp here, and libbnn's OpenMP loops are guarded by _OPENMP
COMMON="-std=c++17 -Wno-unknown-pragmas -Icsrc -Iruntime/include -Iruntime/src -I/usr/include/eigen3 -DBNN_HAVE_X86"
KERNEL_FLAGS="-fno-strict-aliasing -ffp-contract=off"
objs=()
build() {  # build SRC FLAGS...: one object, rebuilt when the source or a header is newer
    local src=$1 obj="$OUT/obj/$(basename "${1%.cpp}").o"
    shift
    if [[ ! -f $obj || $src -nt $obj || -n $(find csrc runtime/src runtime/include -name '*.h*' -newer "$obj" | head -1) ]]; then
        $CXX $SAN $COMMON "$@" -c "$src" -o "$obj"
    fi
    objs+=("$obj")
}
# clang ignores `#pragma GCC target`: each ISA file gets its instruction set on the command line
# (only static functions inside, and libbnn calls one only where the CPU runs it)
build csrc/bnn_portable.cpp $KERNEL_FLAGS
build csrc/bnn_avx2.cpp $KERNEL_FLAGS -mavx2 -mfma -mpopcnt
build csrc/bnn_avx512.cpp $KERNEL_FLAGS -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vpopcntdq -mavx2 -mfma -mpopcnt
build csrc/bnn_act.cpp $KERNEL_FLAGS
for s in runtime/src/model.cpp runtime/src/ops.cpp runtime/src/bconv.cpp runtime/fuzz/fuzz_load.cpp; do build "$s" -ffp-contract=off; done
$CXX -fsanitize=fuzzer,address,undefined "${objs[@]}" -o "$OUT/fuzz_load"

# the seed corpus: a few small models exported by bnnkit now (no binaries in the repository)
if [[ -z $(ls -A "$OUT/corpus") ]]; then
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 "$PYTHON" runtime/fuzz/make_corpus.py "$OUT/corpus"
fi

log="$OUT/fuzz.log"
dirs=("$OUT/corpus")
[[ -d runtime/fuzz/regressions ]] && dirs+=(runtime/fuzz/regressions)
# -timeout: one input may run 10 s (ASan, the file's own trial run); -rss_limit_mb: libbnn must
# refuse absurd sizes itself (the harness caps its buffers at 128 MiB through BNN_MAX_TENSOR_MB)
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
set +e
nice "$OUT/fuzz_load" "${dirs[@]}" -dict=runtime/fuzz/bnn.dict \
    -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=10 -max_len=262144 \
    -artifact_prefix="$OUT/artifacts/" -print_final_stats=1 2>&1 | tee "$log" | grep -E "^#[0-9]+ +(INITED|DONE)|ERROR|SUMMARY|stat::"
status=${PIPESTATUS[0]}
set -e
execs=$(grep -E "^stat::number_of_executed_units" "$log" | awk '{print $2}' | tail -1)
echo "fuzz_libbnn: ${execs:-0} executions in ${SECONDS_TO_RUN} s, exit status $status (log: $log)"
if [[ $status -ne 0 ]] || grep -qE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:" "$log"; then
    echo "error: the fuzzer found a crash, leak or sanitizer report; the input is in $OUT/artifacts/ (see $log)" >&2
    exit 1
fi
