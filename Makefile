# One venv under build/, made from the torch wheels on this disk at the versions of constraints.txt;
# reused while pyproject.toml, setup.py, constraints.txt and csrc/ are unchanged.
PY ?= python3.11
VENV := build/venv
STAMP := $(VENV)/.installed
SYSDEPS := build/.system-deps
DATA ?= ../shared/data/cifar10-jpeg.tar.gz

$(STAMP): pyproject.toml constraints.txt $(wildcard setup.py) $(wildcard csrc/*)
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

# cmake, Eigen, the AArch64 cross compiler, qemu-user and clang (scripts/system_deps.sh: apt-get
# where missing and allowed, else one line naming what to install)
$(SYSDEPS): scripts/system_deps.sh
	bash scripts/system_deps.sh
	@mkdir -p build && touch $(SYSDEPS)

.PHONY: setup test test-dali test-wheel quickstart runtime runtime-static runtime-aarch64 fuzz
setup: $(STAMP)

# The whole suite except the tests that need the optional DALI extra (see test-dali); libbnn first,
# which the deploy tests run.
test: $(STAMP) runtime
	$(VENV)/bin/python -m pytest -q -m "not dali" --durations=15

# Installs the DALI extra (~425 MB from PyPI) and runs the DALI tests alone.
test-dali: $(STAMP)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,dali]'
	$(VENV)/bin/python -m pytest -q -m dali

quickstart: $(STAMP)
	DATA=$(DATA) bash scripts/quickstart.sh

# A wheel and an sdist of bnnkit, the wheel installed into a clean venv (torch made visible from
# build/venv by a path file instead of a second 5.6 GB copy), run from outside the source tree.
test-wheel: $(STAMP)
	bash scripts/test_wheel.sh

# libbnn and bnnrun (runtime/): build/runtime/libbnn.so and build/runtime/bnnrun, no Python needed.
runtime: $(SYSDEPS)
	cmake -S runtime -B build/runtime -DCMAKE_BUILD_TYPE=Release -DBNN_STATIC=OFF >/dev/null
	cmake --build build/runtime -j2

# bnnrun linked statically (libc, libstdc++, libm, OpenMP inside) into build/runtime-static/bnnrun.
runtime-static: $(SYSDEPS)
	cmake -S runtime -B build/runtime-static -DCMAKE_BUILD_TYPE=Release -DBNN_STATIC=ON >/dev/null
	cmake --build build/runtime-static -j2 --target bnnrun

# bnnrun cross-compiled for 64-bit ARM Linux (NEON kernels), fully static so that qemu-aarch64 runs it
# with no sysroot: build/runtime-aarch64/bnnrun (apt-get install g++-aarch64-linux-gnu qemu-user).
runtime-aarch64: $(SYSDEPS)
	cmake -S runtime -B build/runtime-aarch64 -DCMAKE_TOOLCHAIN_FILE=$(CURDIR)/cmake/aarch64-linux-gnu.cmake \
	      -DCMAKE_BUILD_TYPE=Release -DBNN_STATIC=ON >/dev/null
	cmake --build build/runtime-aarch64 -j2 --target bnnrun

# libFuzzer + ASan + UBSan over mutated .bnn files for FUZZ_SECONDS (scripts/fuzz_libbnn.sh).
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: $(STAMP) $(SYSDEPS)
	PYTHON=$(VENV)/bin/python bash scripts/fuzz_libbnn.sh $(FUZZ_SECONDS)
