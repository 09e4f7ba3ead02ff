# The two commands README opens with. Both build the virtual environment first (once,
# and again whenever pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: grid test

grid: $(VENV)/.installed
	$(PY) -m search.grid $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@
