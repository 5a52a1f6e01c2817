# Two commands on a fresh machine with Python 3.10+:  make demo  /  make test   (then: make lab)
# Each creates the virtual environment .venv with pip if it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Which build this pulls depends on the pip index (a local CPU build here; plain PyPI on Linux: the CUDA one).
# Choose it, e.g.  make demo TORCH="torch==2.13.0 --index-url <PyTorch's CPU or CUDA wheel index>"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lab venv clean quality quality-quick speed speed-quick

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rcl demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lab: $(STAMP)
	$(BIN)/rcl lab

# Benchmarks (benchmarks/README.md): the benchmark extra on top of the test environment, then the script.
BENCH := $(VENV)/.bench-installed
$(BENCH): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $(BENCH)

quality: $(BENCH)
	$(BIN)/python benchmarks/quality.py

quality-quick: $(BENCH)
	$(BIN)/python benchmarks/quality.py --quick

speed: $(BENCH)
	$(BIN)/python benchmarks/speed.py

speed-quick: $(BENCH)
	$(BIN)/python benchmarks/speed.py --quick

clean:
	rm -rf $(VENV) runs
