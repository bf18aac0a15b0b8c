# Everyday commands. The README's two set-up commands need none of this.
PY ?= python

.PHONY: build debug test unit lint bench bench-quick clean

build:            ## compile the Cython core in place
	$(PY) setup.py build_ext --inplace -q

debug:            ## compile with the ledger's invariant checks and bounds checks
	FLASHGATE_DEBUG=1 $(PY) setup.py build_ext --inplace -q --force

test: build
	$(PY) -m pytest

unit: build
	$(PY) -m pytest tests/unit

lint:
	ruff check .

bench: build
	$(PY) -m bench

bench-quick: build
	$(PY) -m bench --quick

clean:            ## remove every generated file: Cython's C, the built extensions, caches
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	for pyx in $$(find flashgate -name '*.pyx'); do rm -f "$${pyx%.pyx}.c" "$${pyx%.pyx}.html"; done
	find flashgate tests bench -name '*.so' -delete
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
