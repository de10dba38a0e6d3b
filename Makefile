# The two set-up commands of the README: `make demo` and `make test`.
# Everything they need is installed here, into a virtualenv (.venv), from PyPI.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch for the training extra (an unpinned torch pulls a multi-GB CUDA build).
TORCH  ?= torch==2.13.0
# CuPy for the tests: it imports without a GPU and brings NVRTC, so the suite also compiles
# the CUDA kernels the way the GPU backend does. On a CUDA 13 machine: make test CUDA=cuda13
CUDA   ?= cuda12
DEMO_IN  := iqlut_gpu/data/astronaut_256.png
DEMO_OUT := out/astronaut_256_x4.png

.PHONY: demo test bench bench-quick clean

$(VENV)/.base: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install --quiet "$(TORCH)"
	@# the contrib build replaces the plain one (both install the cv2 package)
	$(PIP) uninstall --quiet --yes opencv-python-headless 2>/dev/null || true
	$(PIP) install --quiet -e ".[test,train,video,bench,cluster,$(CUDA)]"
	touch $@

demo: $(VENV)/.base
	@mkdir -p out
	$(VENV)/bin/iqlut upscale $(DEMO_IN) -o $(DEMO_OUT) --scale 4 --overwrite
	@echo "output: $(abspath $(DEMO_OUT))"

test: $(VENV)/.test
	$(PY) -m pytest -q -ra

bench-quick: $(VENV)/.test
	$(PY) -m bench --quick

bench: $(VENV)/.test
	$(PY) -m bench

clean:
	rm -rf $(VENV) out build *.egg-info
