# Two commands on a fresh machine: `make demo` and `make test`.
# Both create a virtual environment in .venv with Kolibri and this plugin first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KOLIBRI_HOME ?= $(CURDIR)/.kolibri
export KOLIBRI_HOME

.PHONY: venv test test-fast demo bench package-check lint clean

$(BIN)/kolibri: requirements.txt requirements-test.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt -r requirements-test.txt
	$(BIN)/pip install -e .
	$(BIN)/kolibri plugin enable kolibri_sync_extras_plugin
	touch $@

venv: $(BIN)/kolibri

# the full suite, as CI runs it
test: venv
	$(BIN)/python -m pytest test/

# the in-process tests only: no Kolibri process started, for the development loop
test-fast: venv
	$(BIN)/python -m pytest test/ -m "not e2e"

demo: venv
	$(BIN)/python -m sync_lab.demo $(DEMO_ARGS)

bench: venv
	$(BIN)/python -m sync_lab.demo --bench $(DEMO_ARGS)

# build the sdist and the wheel, check what they hold, and enable the wheel in a
# fresh environment with stock Kolibri; the checked files are left in dist/
package-check:
	PYTHON=$(PYTHON) .ci/check-package

lint:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements-dev.txt
	$(BIN)/pre-commit run --all-files

clean:
	rm -rf $(VENV) $(KOLIBRI_HOME) build dist *.egg-info
