# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything first. PyTorch comes from PyPI: a CUDA build, which also runs on the CPU (about 3 GB
# to download, 6 GB in .venv). For the CPU-only wheels instead (about 0.2 GB of PyTorch):
#   make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_INDEX_URL ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check --progress-bar on
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("anim-clip needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@echo "Installing anim-clip into $(VENV), once: PyTorch, open_clip, decord2, PyAV, zarr, faiss-cpu and the test tools."
	@echo "PyTorch comes $(if $(TORCH_INDEX_URL),from $(TORCH_INDEX_URL).,from PyPI: a CUDA build that also runs on the CPU, about 3 GB to download and 6 GB on disk (CPU-only wheels: make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu).)"
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX_URL),$(PIP) torch torchvision --index-url $(TORCH_INDEX_URL))
	$(PIP) -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/anim-clip demo

# Two pytest-xdist workers of one thread each: the tests are small and mostly single-threaded, so two
# at a time halve the wall time on two cores, where two threads per test (and per CLI process they
# start) only contend.
test: setup
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2

bench: setup
	for name in decode decoder_pixels extract cache_io gcn faiss train eval head precision baselines demo_recipe small_data sweep predict season; do $(PY) -m benchmarks.bench_$$name || exit 1; done

clean:
	rm -rf $(VENV) demo-out .pytest_cache
