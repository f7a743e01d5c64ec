# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything first (PyTorch from PyPI: a CUDA build, which also runs on CPU).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("anim-clip needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/anim-clip demo

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: setup
	for name in decode decoder_pixels extract cache_io gcn faiss train; do $(PY) -m benchmarks.bench_$$name || exit 1; done

clean:
	rm -rf $(VENV) demo-out .pytest_cache
