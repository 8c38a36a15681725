# The README's two commands: `make lab` (the main job) and `make test`.
# Each sets up what it needs on a fresh machine: a virtual environment in .venv with
# PyTorch, the package with its extras, and (where apt is available) Chromium for the browser test.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ddpm_lib-installed
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup lab demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_browser.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,notebooks]'
	bash scripts/setup_browser.sh
	touch $(STAMP)

# Open the notebook series in JupyterLab.
lab: setup
	$(PY) -m jupyter lab notebooks/

# Run the whole series headless, outputs into build/, on whatever device is there.
demo: setup
	mkdir -p build
	$(PY) -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
		--output-dir build notebooks/0*.ipynb

# Unit, oracle and end-to-end tests, every notebook under nbval, and the browser test.
test: setup
	$(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

# The library's tests alone, without notebooks and browser.
test-fast: setup
	$(PY) -m pytest tests -m "not browser and not slow" -p no:cacheprovider

bench: setup
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/sampling.py

clean:
	rm -rf build runs .pytest_cache
