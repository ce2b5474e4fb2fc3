# The two commands: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORK ?= fomo_work

.PHONY: install test test-fast demo clean

install: $(STAMP)

# pip byte-compiles every file it installs, one after the other (the 15,000 files of torch, nnU-Net and the
# rest); compileall does the same work on every core (-j 0), in less wall time (docs/results/demo-and-tests.md).
# Its exit status is ignored, as pip ignores the same errors (a torch test file in Python 3.12 syntax).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet --no-compile pip
	$(BIN)/python -m pip install --progress-bar off --no-compile -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	$(BIN)/python -c "import torch, nnunetv2, dynamic_network_architectures, nilearn; print('installed torch', torch.__version__)"
	touch $(STAMP)

# two pytest workers (pytest-xdist), one test file each at a time, so module fixtures are built once; what that
# saves on a 2-core machine: docs/results/demo-and-tests.md.
# --no-loadscope-reorder keeps the collection order (longest files first, tests/conftest.py) instead of xdist's
# default order by the number of tests in a file, which started the longest file last
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -x -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# the edit loop: the tests that carry no tier marker (slow, subprocess, stress: pyproject.toml, tests/conftest.py)
test-fast: install
	$(BIN)/python -m pytest -x -q -m "not slow and not subprocess and not stress"

demo: install
	$(BIN)/fomo-nnunet benchmark --preset tiny --work $(WORK)

clean:
	rm -rf $(VENV) $(WORK) fomo_quick build *.egg-info
