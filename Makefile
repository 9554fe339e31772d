# ccproxy's benchmark (see bench/README.md). The interpreter must have ccproxy's
# dependencies: .venv/bin/python when that exists, else python3; override with
# `make bench PYTHON=/path/to/python`, pass options with BENCH_ARGS="--quick".
PYTHON ?= $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)
BENCH_ARGS ?=

.PHONY: bench bench-quick
bench:
	$(PYTHON) -m bench $(BENCH_ARGS)

bench-quick:
	$(PYTHON) -m bench --quick $(BENCH_ARGS)
