# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_LAKE ?= demo-lake

.PHONY: demo test lint typecheck unit bench-smoke bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_LAKE)
	$(BIN)/meterlake init $(DEMO_LAKE)
	$(BIN)/meterlake simulate --lake $(DEMO_LAKE) --meters 300 --days 31 --start 2026-10-01 --seed 7 --anomalies 0.05
	$(BIN)/meterlake compact --lake $(DEMO_LAKE)
	$(BIN)/meterlake vee --lake $(DEMO_LAKE)
	$(BIN)/meterlake analyze --lake $(DEMO_LAKE) --from 2026-10-01 --to 2026-10-31
	$(BIN)/meterlake alerts --lake $(DEMO_LAKE) --rules examples/demo_alerts.toml --now 2026-11-01T00:00Z
	$(BIN)/meterlake bill --lake $(DEMO_LAKE) --period 2026-10
	$(BIN)/meterlake sql --lake $(DEMO_LAKE) --file examples/demo_bills.sql
	$(BIN)/meterlake info --lake $(DEMO_LAKE)
	$(BIN)/meterlake quality --lake $(DEMO_LAKE) --max-rows 10
	$(BIN)/meterlake sql --lake $(DEMO_LAKE) --file examples/demo_query.sql
	$(BIN)/meterlake sql --lake $(DEMO_LAKE) --file examples/demo_analytics.sql
	$(BIN)/meterlake report --lake $(DEMO_LAKE) --meter m-00006 --period 2026-10 --out $(DEMO_LAKE)/report-m-00006.html
	@echo "customer usage report: $(DEMO_LAKE)/report-m-00006.html (open it in a browser)"

test: lint typecheck unit bench-smoke

lint: $(STAMP)
	$(BIN)/ruff check meterlake tests benchmarks
	$(BIN)/ruff format --check meterlake tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

# The benchmarks at a small scale, so they never rot; `make bench` runs them at full size.
bench-smoke: $(STAMP)
	METERLAKE_BENCH_SCALE=smoke $(BIN)/pytest -q benchmarks --benchmark-disable -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/pytest -q -s benchmarks --benchmark-columns=min,median,max,rounds

clean:
	rm -rf $(VENV) $(DEMO_LAKE) .pytest_cache .mypy_cache .ruff_cache .benchmarks
