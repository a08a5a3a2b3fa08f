# thinjax: `make run` sets up and runs the offline default job; `make test` sets up and tests;
# `make docs` builds the docs site into site/ (mkdocs.yml).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default
CONFIG ?= configs/default.py

.PHONY: install run test docs clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m thinjax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# --strict: a warning (a broken link, a docstring the reference cannot read) fails the build.
# NO_MKDOCS_2_WARNING: Material's end-of-life banner, printed on every build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) runs .pytest_cache site
