# One venv under build/, made from the torch wheels on this disk; reused while pyproject.toml is unchanged.
PY ?= python3.11
VENV := build/venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml $(wildcard setup.py)
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

.PHONY: setup test quickstart
setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

quickstart: $(STAMP)
	bash scripts/quickstart.sh
