# Every target depends on the venv, so each command works alone on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODE   ?=
MODES  ?=
TRIALS ?= 30
ARGS   ?=

.PHONY: setup test lint backtest sample tune compare bench clean live-paper

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

sample: setup
	$(PY) -m data sample $(ARGS)

backtest: setup
	$(PY) -m research.backtest $(if $(MODE),--mode $(MODE)) $(ARGS)

tune: setup
	$(PY) -m research.tune --trials $(TRIALS) $(if $(MODE),--mode $(MODE)) $(ARGS)

compare: setup
	$(PY) -m research.compare $(if $(MODES),--modes $(MODES)) $(ARGS)

# Alpaca paper with ALPACA_API_KEY/ALPACA_SECRET_KEY; else the latest sample session through live.sim
live-paper: setup
	AUTO_MODE=1 $(PY) -m tierlab.live_paper $(if $(MODE),--mode $(MODE)) $(ARGS)

bench: setup
	for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache   # reports/ holds your runs: never removed here
