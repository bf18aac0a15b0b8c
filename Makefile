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

clean:
	rm -rf build flashgate/core/_stock.c flashgate/limiter/_gcra.c flashgate/gateway/_net.c \
		flashgate/*/*.so
