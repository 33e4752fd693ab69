# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install browser demo test test-unit bench lint up down clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, so the project's torch range does not pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# Fail here if the project's dependencies replaced the CPU build of torch installed above.
	$(PY) -c "import sys, torch; v = torch.__version__; sys.exit(None if v == '2.13.0+cpu' else 'installing the project replaced torch 2.13.0+cpu with ' + v)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/img2img demo

# The web page test drives Debian's headless Chromium; as root (CI) this installs it where missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "The browser test needs Chromium: sudo apt-get install -y chromium" >&2; exit 1; \
	fi

test: install browser
	$(PY) -m pytest tests -q --durations=25

test-unit: install
	$(PY) -m pytest tests/unit -q

bench: install
	$(PY) benchmarks/run_all.py

lint: install
	$(VENV)/bin/ruff check .

up: install
	$(VENV)/bin/img2img stack up

down: install
	$(VENV)/bin/img2img stack down

clean:
	rm -rf $(VENV) demo-output .pytest_cache
