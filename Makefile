# `make demo` and `make test` do all their own set-up: redis-server, rabbitmq-server and
# prometheus (for promtool; Debian packages) and a virtualenv with the project and its test
# extras.
VENV := .venv
MLFLOW_VENV := .venv-mlflow
# The warehouse engines the warehouse tests write to (tests/emulators/warehouses.py).
WAREHOUSES_VENV := .venv-warehouses
BIGQUERY_VENV := .venv-bigquery
PY := $(VENV)/bin/python
EXTRA_REQUIREMENTS := $(wildcard tests/requirements-*.txt)

.PHONY: demo test bench lint typecheck setup redis-server rabbitmq-server promtool wheel-smoke node-example go

demo: setup
	$(PY) -m harness.demo

test: setup
	$(PY) -m pytest

# The built wheel, installed into a fresh virtualenv, driven from outside the repository.
wheel-smoke: setup
	bash .ci/wheel_smoke.sh

bench: setup
	$(PY) bench/bench.py

# Style, structure and types: ruff (rules and format), the layer contracts
# (import-linter, pyproject.toml) and mypy.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Types: mypy over every application package ([tool.mypy] in pyproject.toml: standard mode,
# strict for destinations/ and broadcast_engine/).
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

setup: redis-server rabbitmq-server promtool node-example go $(VENV)/.installed $(MLFLOW_VENV)/.installed \
	$(WAREHOUSES_VENV)/.installed $(BIGQUERY_VENV)/.installed

$(VENV)/.installed: pyproject.toml $(EXTRA_REQUIREMENTS) tests/nodeps-requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ops,bigquery]' $(foreach f,$(EXTRA_REQUIREMENTS),-r $(f))
	$(PY) -m pip install --quiet --no-deps -r tests/nodeps-requirements.txt
	touch $@

# The MLflow server for tests/test_otlp_mlflow_e2e.py, in its own venv: the full `mlflow`
# package pins graphql-core below what arize-phoenix needs.
$(MLFLOW_VENV)/.installed: tests/mlflow-server-requirements.txt
	python3 -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet -r tests/mlflow-server-requirements.txt
	touch $@

$(WAREHOUSES_VENV)/.installed: tests/warehouse-emulators-requirements.txt
	python3 -m venv $(WAREHOUSES_VENV)
	$(WAREHOUSES_VENV)/bin/pip install --quiet -r tests/warehouse-emulators-requirements.txt
	touch $@

# local-bigquery needs Python 3.13: tests/python313.sh finds one (pyenv's, one on PATH,
# Debian's) or installs it, and says why when it cannot.
$(BIGQUERY_VENV)/.installed: tests/bigquery-emulator-requirements.txt tests/python313.sh
	py=$$(bash tests/python313.sh) && "$$py" -m venv $(BIGQUERY_VENV)
	$(BIGQUERY_VENV)/bin/pip install --quiet -r tests/bigquery-emulator-requirements.txt
	$(BIGQUERY_VENV)/bin/python -c "from duckdb_extensions import import_extension as i; \
		[i(name) for name in ('ducklake', 'icu', 'spatial')]"
	touch $@

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	}

# promtool checks the shipped alert rules and dashboard queries (tests/test_observability_files.py).
# Debian's `prometheus` package brings it; no Prometheus server is started.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing prometheus (Debian package, for promtool) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	}

# RabbitMQ as the broker (tests/test_rabbitmq_broker.py); the tests start their own node.
rabbitmq-server:
	@command -v rabbitmq-server >/dev/null 2>&1 || test -x /usr/sbin/rabbitmq-server || { \
		echo "installing rabbitmq-server (Debian package) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; \
	}

# The Node gateway example (docs/gateway.md; tests/test_gateway_clients.py runs it): stock
# celery-node from the committed package-lock.json. Node and npm are Debian packages.
NODE_EXAMPLE := examples/node
node-example: $(NODE_EXAMPLE)/node_modules/.installed

$(NODE_EXAMPLE)/node_modules/.installed: $(NODE_EXAMPLE)/package.json $(NODE_EXAMPLE)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		echo "installing nodejs and npm (Debian packages) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	}
	cd $(NODE_EXAMPLE) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The Go gateway example (examples/go: standard library only, nothing to download) is built
# by tests/test_gateway_clients.py with Debian's Go toolchain.
go:
	@command -v go >/dev/null 2>&1 || { \
		echo "installing golang-go (Debian package) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null; \
	}
