# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup test test-fast demo bench clean chromium

setup: $(VENV)/.installed chromium

# Headless chromium renders the report page in one test (it skips without it). Installed only where we are
# root and apt works; never fails the setup.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: chromium not installed (the report page layout test will skip)"

# torch first, pinned, so that the local CPU wheel is used and no CUDA build is pulled in.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e '.[dev,bench,ray]'
	$(PIP) --no-deps -c constraints.txt $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['corpus']))")
	touch $@

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

demo: setup
	$(VENV)/bin/onnxforge demo -o demo-out

bench: setup
	cd benchmarks && ../$(PY) model_speed.py && ../$(PY) optimizer_speed.py && ../$(PY) evaluator_overhead.py && ../$(PY) corpus.py

clean:
	rm -rf $(VENV) demo-out bench-out .cache
