# Two commands matter: `make demo` (set up + run the whole pipeline on the embedded default)
# and `make test`. VENV can point elsewhere (CI caches it outside the clone).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)
export FACESWAP_NO_PROGRESS ?= 0
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1

.PHONY: venv demo test bench flow compare clean-data

venv: $(STAMP)
	@# A cached venv may hold an editable install of another clone: point it at this one.
	@(cd / && $(abspath $(PY)) -c "import faceswap, pathlib, sys; sys.exit(pathlib.Path(faceswap.__file__).resolve().parents[1] != pathlib.Path('$(CURDIR)').resolve())") \
		|| $(PY) -m pip install --quiet --no-deps --no-build-isolation -e "$(CURDIR)"

$(STAMP):  # the hash of the requirement files is in the name
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: venv  # every stage, under one parent MLflow run (the stage runs nest under it)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m faceswap.training.tracking -- dvc repro
	@echo "done: see metrics/*.json, data/*.parquet; 'dvc dag' shows the graph"

compare: venv  # every architecture, same recipe and data -> docs/compare.md + an MLflow run (flows/compare.py)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m flows.compare

test: venv
	$(PY) -m pytest -q

bench: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m bench.data_prep
	$(PY) -m bench.models
	$(PY) -m bench.train_data
	$(PY) -m bench.swap
	$(PY) -m bench.evaluate
	$(PY) -m bench.train

flow: venv
	$(PY) -m flows.prepare
