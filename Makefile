# `make demo` and `make test` do all their own set-up: redis-server (Debian package) and a
# virtualenv with the project and its test extras.
VENV := .venv
PY := $(VENV)/bin/python
EXTRA_REQUIREMENTS := $(wildcard tests/requirements-*.txt)

.PHONY: demo test bench lint setup redis-server

demo: setup
	$(PY) -m harness.demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/bench.py

lint: setup
	$(VENV)/bin/ruff check .

setup: redis-server $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(EXTRA_REQUIREMENTS)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ops]' $(foreach f,$(EXTRA_REQUIREMENTS),-r $(f))
	touch $@

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	}
