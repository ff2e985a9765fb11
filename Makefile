# Two commands matter: `make run` (the main job) and `make test`. Both create and
# reuse a local virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench schemas docs docs-serve docs-images clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from pip: it takes the CPU build that lies on these machines
	# (uv would ignore it and download a multi-GB CUDA build).
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,all,docs]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/esper ppo --episodes 10

test: $(STAMP)
	$(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples backends docs
	$(BIN)/ruff format --check src tests bench examples backends docs

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/health.py
	$(BIN)/python bench/hub.py
	$(BIN)/python bench/analytics.py
	$(BIN)/python bench/backends.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/overhead_parts.py

schemas: $(STAMP)
	$(BIN)/esper contracts export contracts

# The documentation site, built strictly (a broken link or reference fails it) into site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# Trains two short runs (about a minute) and redraws docs/tui.svg and docs/report.png.
docs-images: $(STAMP)
	$(BIN)/python docs/_tools/images.py

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
