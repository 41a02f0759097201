# One venv under build/, made from the torch wheels on this disk; reused while pyproject.toml is unchanged.
PY ?= python3.11
VENV := build/venv
STAMP := $(VENV)/.installed
DATA ?= ../shared/data/cifar10-jpeg.tar.gz

$(STAMP): pyproject.toml $(wildcard setup.py) $(wildcard csrc/*)
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

.PHONY: setup test test-dali quickstart
setup: $(STAMP)

# The whole suite except the tests that need the optional DALI extra (see test-dali).
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not dali"

# Installs the DALI extra (~425 MB from PyPI) and runs the DALI tests alone.
test-dali: $(STAMP)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,dali]'
	$(VENV)/bin/python -m pytest -q -m dali

quickstart: $(STAMP)
	DATA=$(DATA) bash scripts/quickstart.sh
