#!/usr/bin/env bash
# The system packages bnnkit's native side needs beyond Python (Debian/Ubuntu names), installed with
# apt-get where one is missing and this user may (root, or sudo without a password):
#   cmake, libeigen3-dev, g++       libbnn and bnnrun (make runtime)
#   g++-aarch64-linux-gnu, qemu-user the AArch64 build and its tests under qemu-aarch64
#   clang, libclang-rt-14-dev       the libFuzzer + ASan/UBSan build (make fuzz)
# Prints one line and exits 2 when something is missing and cannot be installed.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have cmake || need+=(cmake)
[[ -f /usr/include/eigen3/Eigen/Core ]] || need+=(libeigen3-dev)
have g++ || need+=(g++)
have aarch64-linux-gnu-g++ || need+=(g++-aarch64-linux-gnu)
have qemu-aarch64 || need+=(qemu-user)
have clang++ || need+=(clang)
# libFuzzer's runtime: clang finds it only with the compiler-rt package
if have clang++ && ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
        | clang++ -x c++ -fsanitize=fuzzer - -o /dev/null >/dev/null 2>&1; then
    need+=("libclang-rt-$(clang++ -dumpversion | cut -d. -f1)-dev")
fi
[[ ${#need[@]} -eq 0 ]] && exit 0
sudo=()
[[ $(id -u) -eq 0 ]] || { sudo -n true 2>/dev/null && sudo=(sudo -n); } || {
    echo "error: missing system packages ${need[*]}; install them: sudo apt-get install -y ${need[*]}" >&2; exit 2; }
echo "system packages: installing ${need[*]}"
if ! { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"; } >/dev/null 2>&1; then
    echo "error: apt-get could not install ${need[*]}; install them by hand: apt-get install -y ${need[*]}" >&2
    exit 2
fi
# once more: clang's compiler-rt package is named after the clang version just installed
[[ -n ${BNNKIT_DEPS_AGAIN:-} ]] || BNNKIT_DEPS_AGAIN=1 exec bash "$0"
