# Two commands for a fresh machine: `make train` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/cnn4.py
ARGS ?=
DEBIAN_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ONEDNN_HEADER := /usr/include/oneapi/dnnl/dnnl.hpp
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: train test test-all lint format data venv onednn clean reproduce sweep bench

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(VENV)/.installed onednn

# oneDNN's convolutions (fmnist_jax/onednn.py) build against Debian's libdnnl-dev:
# installed here with apt-get when running as root. Without it the CNNs use XLA's.
onednn: $(VENV)/.installed
	@if [ ! -f $(ONEDNN_HEADER) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing libdnnl-dev with apt-get ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libdnnl-dev g++ >/dev/null; \
	fi
	@$(PY) -c "from fmnist_jax import onednn; r = onednn.unavailable_reason(); print('oneDNN convolutions:', r or 'ready')"

# Prepares Fashion-MNIST with tfds. Offline, tfds needs Debian's copy of the IDX files:
# installed here with apt-get when running as root.
data: venv
	@if ! $(PY) -c "from fmnist_jax import input_pipeline as p; raise SystemExit(not p.is_prepared())" 2>/dev/null; then \
	  if [ ! -f $(DEBIAN_DATA) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing dataset-fashion-mnist with apt-get ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; \
	  $(PY) -m fmnist_jax.input_pipeline; \
	fi

train: data
	$(PY) launch.py --config=$(CONFIG) $(ARGS)

# Every seed experiment over 3 seeds -> docs/RESULTS.md. Resumable: rerun to continue.
reproduce: data
	$(PY) -m fmnist_jax.reproduce $(ARGS)

# A sweep file's rows over its seeds -> its table in the markdown file it names. Resumable.
SWEEP ?=
sweep: data
	@if [ -z "$(SWEEP)" ]; then echo "error: usage: make sweep SWEEP=configs/sweeps/NAME.py" >&2; exit 1; fi
	$(PY) -m fmnist_jax.sweep --sweep=$(SWEEP) $(ARGS)

# Speed against TF Keras (and PyTorch if installed), in one run -> docs/benchmark.json.
bench: data
	$(PY) -m fmnist_jax.benchmark --time_to_accuracy --ablation $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Two test processes (pytest-xdist), each test file in one of them: most of the suite is
# compilation, process start-up and waiting on child processes, which a second process
# overlaps even on two cores.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

test: lint data
	$(PYTEST) -m "not slow"

test-all: lint data
	$(PYTEST)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
