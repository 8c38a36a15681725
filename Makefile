# The README's two commands: `make lab` (the main job) and `make test`.
# Each sets up what it needs on a fresh machine: a virtual environment in .venv with
# PyTorch, the package with its extras, and (where apt is available) Chromium for the browser test.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ddpm_lib-installed
SITE_STAMP := $(VENV)/.site-installed
TORCH  := torch==2.14.1 torchvision==0.29.1
# Colab's widgets (ipywidgets 7.7.1 and its release's pins), for the Colab emulation (tests/test_colab.py)
COLAB_WIDGETS := ipywidgets==7.7.1 widgetsnbextension==3.6.1 jupyterlab_widgets==1.1.1 ipython_genutils==0.2.0
# the offline JPEG copy of CIFAR-10 (make docs, gpu-carry)
CIFAR10_JPEG ?= ../shared/data/cifar10-jpeg/train.tar.gz

.PHONY: setup lab demo docs site lint test test-mkl test-fast bench gpu-wheels gpu-data gpu-carry gpu-check release clean

setup: $(STAMP) $(VENV)/colab-wheels $(SITE_STAMP)

# Colab's widgets for the Colab emulation (tests/test_colab.py), downloaded once; the test runs offline
$(VENV)/colab-wheels: | $(STAMP)
	rm -rf $@.tmp && $(PY) -m pip download -q --no-deps -d $@.tmp $(COLAB_WIDGETS) && mv $@.tmp $@

$(STAMP): pyproject.toml scripts/setup_browser.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,notebooks]'
	bash scripts/setup_browser.sh
	touch $(STAMP)

# Open the notebook series in JupyterLab. Root (a container, a cloud VM) needs --allow-root, added here.
# LAB_ARGS passes more options, e.g. on a remote machine:
#   make lab LAB_ARGS="--no-browser --port 8888"
# then, from your own computer:  ssh -L 8888:localhost:8888 you@that-machine  and open the URL it prints
# (with its token) there. `--ip 0.0.0.0` serves every network interface instead: only behind a firewall.
LAB_ARGS  ?=
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup
	$(PY) -m jupyter lab $(ROOT_FLAG) $(LAB_ARGS) notebooks/

# Run the whole series headless, outputs into build/, on whatever device is there.
demo: setup
	mkdir -p build
	$(PY) -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
		--output-dir build notebooks/[0-9]*.ipynb

# Executed copies of the series for readers on GitHub, committed in docs/notebooks/: the real sizes
# (not smoke mode), on whatever device is there. The test run never collects them (pyproject's
# testpaths and norecursedirs; `make test` names tests/ and notebooks/ only).
# CIFAR-10 comes from the JPEG copy beside the checkout when it is there (../shared/data/cifar10-jpeg, extracted
# once into data/cifar10-jpeg in ImageFolder layout, read through DDPM_DATA_ROOT), else torchvision downloads it.
CIFAR10_JPEG_DIR := $(dir $(CIFAR10_JPEG))
DOCS_DATA        := $(if $(wildcard $(CIFAR10_JPEG_DIR)train.tar.gz),data/cifar10-jpeg)

data/cifar10-jpeg:
	mkdir -p $@.tmp
	tar xzf $(CIFAR10_JPEG_DIR)train.tar.gz -C $@.tmp
	tar xzf $(CIFAR10_JPEG_DIR)test.tar.gz -C $@.tmp
	mv $@.tmp $@

# DOCS_MODEL: the model notebooks 06-08 show (their MODEL = "auto" reads it from DDPM_MODEL): the CPU model that
# ships with the package, or own, official, or a checkpoint file / run folder (a GPU run's: make docs DOCS_MODEL=PATH).
DOCS_MODEL ?= shipped

docs: setup $(DOCS_DATA)
	mkdir -p docs/notebooks
	DDPM_SMOKE=0 DDPM_MODEL=$(DOCS_MODEL) $(if $(DOCS_DATA),DDPM_DATA_ROOT=$(CURDIR)/$(DOCS_DATA)) $(PY) -m jupyter nbconvert --to notebook --execute \
		--ExecutePreprocessor.timeout=-1 --output-dir docs/notebooks notebooks/[0-9]*.ipynb

# The course as a website (mkdocs.yml, website/): the executed notebooks in docs/notebooks and the pages of docs/,
# into SITE_DIR (git-ignored); .github/workflows/pages.yml publishes it, and tests/test_site.py builds it the same
# way. No torch: its stamp installs MkDocs and its plugins (website/requirements.txt) into .venv, creating .venv if
# there is none (setup installs them too, so the tests never pip-install while other tests run); MathJax comes
# from npm into .venv/mathjax@VERSION and is copied into the site, which so reads offline, with no CDN.
SITE_DIR    ?= _site
MATHJAX     := mathjax@3.2.2
MATHJAX_DIR := $(VENV)/$(MATHJAX)

$(SITE_STAMP): website/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r website/requirements.txt
	touch $@

$(MATHJAX_DIR): | $(SITE_STAMP)
	rm -rf $@.tmp && npm install --silent --no-audit --no-fund --prefix $@.tmp $(MATHJAX)
	mv $@.tmp/node_modules/mathjax $@ && rm -rf $@.tmp

site: $(SITE_STAMP) $(MATHJAX_DIR)
	NO_MKDOCS_2_WARNING=1 SITE_MATHJAX=$(CURDIR)/$(MATHJAX_DIR) $(PY) -m mkdocs build --strict --site-dir $(abspath $(SITE_DIR))

# ruff (lint and import order, over the code and the notebooks) and mypy over the core; settings in pyproject.toml.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# The lint, then unit, oracle and end-to-end tests, every notebook under nbval, the Colab emulation and the
# browser test, in TEST_WORKERS processes side by side (pytest-xdist: a test module, a notebook's cells and the
# scopes conftest.py shares run in one process, in order). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))
test: setup lint
	$(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider $(XDIST)

# Every notebook under nbval once per MKL code path (MKL_CBWR) that this CPU has: COMPATIBLE always, AVX2 and
# AVX512 where /proc/cpuinfo lists avx2 / avx512f. MKL picks its kernels by CPU; the notebooks' asserts must
# hold under each (ddpm_lib.tolerance).
MKL_PATHS := COMPATIBLE $(if $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo y),AVX2) \
             $(if $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo y),AVX512)

test-mkl: setup
	set -e; for path in $(MKL_PATHS); do echo "== MKL_CBWR=$$path"; \
		MKL_CBWR=$$path $(PY) -m pytest notebooks --nbval-lax -p no:cacheprovider -q $(XDIST); done

# The library's tests alone, without notebooks and browser.
test-fast: setup
	$(PY) -m pytest tests -m "not browser and not slow" -p no:cacheprovider

bench: setup
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/sampling.py

# The GPU check (benchmarks/gpu_check.py: training and sampling speed against the issue's targets, a
# ~4-minute CIFAR-10 run, the notebooks under nbval; at most 8 minutes) writes docs/gpu/.
# For a GPU machine without internet, put together here what it lacks (gpu-carry/, git-ignored):
#   make gpu-carry      wheels for its Python (GPU_PY_VERSION) + CIFAR-10's JPEG copy (CIFAR10_JPEG)
# and there, with gpu-carry/ beside the code:
#   make gpu-check      (without make: the command at the top of benchmarks/gpu_check.py)
GPU_CARRY      := gpu-carry
GPU_PY_VERSION ?= 3.12
GPU_PYTHON     ?= python3
GPU_PACKAGES   := nbval ipykernel jupyter_client nbformat ipywidgets diffusers denoising-diffusion-pytorch torch-fidelity
GPU_OUT        ?= docs/gpu

gpu-wheels: setup
	$(PY) scripts/gpu_wheels.py --dest $(GPU_CARRY)/wheels --python-version $(GPU_PY_VERSION) $(GPU_PACKAGES)

gpu-data:
	mkdir -p $(GPU_CARRY)
	cp $(CIFAR10_JPEG) $(GPU_CARRY)/cifar10-train.tar.gz

gpu-carry: gpu-wheels gpu-data

# With gpu-carry/ the wheels install offline and the run trains on the JPEG copy; without it pip uses
# the index and the run downloads CIFAR-10 into data/. Should pip fail ("-"), the check still runs: what
# lacks a package fails on its own, with its error in the report.
gpu-check:
	-$(GPU_PYTHON) -m pip install -q $(if $(wildcard $(GPU_CARRY)/wheels),--no-index --find-links $(GPU_CARRY)/wheels) \
		$(GPU_PACKAGES)
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) benchmarks/gpu_check.py --nbval --out $(GPU_OUT) \
		$(if $(wildcard $(GPU_CARRY)/cifar10-train.tar.gz),--data $(GPU_CARRY)/cifar10-train.tar.gz)

# make release VERSION=X.Y.Z: X.Y.Z into ddpm_lib/__init__.py (the version's one place) and its tag vX.Y.Z into
# every notebook's install cell and Colab badge (scripts/install_ref.py, which first refuses a dirty tree, a
# malformed or non-increasing version or an existing tag, writing nothing), then a commit and the tag vX.Y.Z.
# Nothing is pushed. Standard library only: no setup needed.
release:
	@$(PYTHON) scripts/install_ref.py --release "$(VERSION)"
	git commit -q -a -m "Release $(VERSION): ddpm_lib/__init__.py's version, the notebooks install tag v$(VERSION)"
	git tag -a "v$(VERSION)" -m "ddpm_lib $(VERSION)"
	@echo "tagged v$(VERSION); nothing pushed: git push origin HEAD v$(VERSION) publishes the commit and the tag"

clean:
	rm -rf build runs .pytest_cache _site
