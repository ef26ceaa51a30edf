# `make demo` and `make test` create .venv on first use with ONE pip call.
# The constraints keep pip on the CPU build of torch; on a GPU machine run
# `make demo CONSTRAINTS=` (or install by hand, see README.md).
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medsight demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
