# Two commands do all the set-up on a fresh clone:
#   make main   installs into .venv and runs the main job (prints a results table)
#   make test   installs into .venv (with the test extra) and runs the test suite
# Both install the tensorflow extra; `pip install tfcompress` alone gives the
# TensorFlow-free check tools (inspect, validate, benchmark).
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed
# pytest-xdist workers: one per core of the 2-core CI machines; each test file stays on one worker.
TEST_WORKERS ?= 2

.PHONY: main test install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[tensorflow,test]"
	touch $(STAMP)

install: $(STAMP)

main: $(STAMP)
	$(VENV)/bin/tfcompress demo --output_dir=results/demo --overwrite

test: $(STAMP)
	TFCOMPRESS_DATA_DIR=$${TFCOMPRESS_DATA_DIR:-$(abspath ../shared/data)} $(VENV)/bin/python -m pytest -q --durations=30 -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) results
