# Two entry points for a fresh machine with Python 3 and make:
#   make demo   installs into .venv and runs the main example end to end
#   make test   installs into .venv and runs the whole test suite with coverage
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.13.0 is pinned: on these machines it installs a CPU build from local files.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/pruning/study.py

# The explorer's tests drive a real headless browser: Debian's chromium (Playwright's own browser
# download cannot run everywhere). Installed here when missing, so a fresh machine needs nothing by hand.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "make test needs chromium for the explorer's browser tests: sudo apt-get install chromium" \
		     "(or set CHROMIUM=/path/to/chromium)"; exit 1; \
	fi

test: $(STAMP) $(CHROMIUM)
	DAGGER_TEST_CHROMIUM=$(CHROMIUM) \
	$(PY) -m pytest -q -p no:cacheprovider --timeout=600 \
		--cov=dagger --cov-report=term --cov-fail-under=90

# The linters are pinned, so that a fresh clone checks with the same rules as CI and every developer.
$(VENV)/.lint-installed: $(STAMP)
	$(PY) -m pip install --quiet ruff==0.17.6 mypy==2.4.1
	touch $@

lint: $(VENV)/.lint-installed
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

# benchmarks/instructions.py counts instructions with valgrind (apt-get install valgrind);
# without it, that section of docs/benchmarks.md says it was skipped.
bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .coverage .coverage.* runs
