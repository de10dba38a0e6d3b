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

.PHONY: demo test bench bench-quick gpu-wheels gpu-check gpu-data clean

$(VENV)/.base: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

# NVRTC 13 (the cuda13 extra's) goes beside the venv, not into it (CuPy would load it
# instead of the cuda12 extra's): tests/test_cuda_compile.py compiles with both.
NVRTC13 := $(VENV)/nvrtc13

$(VENV)/.test: $(VENV)/.base
	$(PIP) install --quiet "$(TORCH)"
	@# the contrib build replaces the plain one (both install the cv2 package)
	$(PIP) uninstall --quiet --yes opencv-python-headless 2>/dev/null || true
	$(PIP) install --quiet -e ".[test,train,video,bench,cluster,$(CUDA)]"
	$(PIP) install --quiet --no-deps --target $(NVRTC13) "nvidia-cuda-nvrtc>=13,<14"
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

# The GPU check (bench/gpu_check.py): run it on a machine with a CUDA device, first thing.
# `make gpu-wheels` (here, with pip access) puts the wheels the device image lacks into
# .whl/ (git-ignored); `make gpu-check` installs them (offline) and runs the check:
# `gpu` tests, GPU bench cases, the video pipeline; results in bench/results/ and $$OUT.
WHL ?= .whl
GPU_PY ?= python3
# imageio-ffmpeg 0.6.0 (ffmpeg 7.0.2, 29 MB): 0.8.x's wheel is 68 MB, over the 64 MiB the
# device tool carries. Dask, distributed and dask-cuda (with the dependencies the image
# lacks) let the `cuda` cluster test run there.
GPU_WHEELS := imageio-ffmpeg==0.6.0 dask==2026.8.0 distributed==2026.8.0 dask-cuda==26.10.0 \
	tornado==6.6.1 zict==3.0.0 tblib==3.2.2 partd==1.4.2 locket==1.0.0

gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform any \
	  -d $(WHL) $(GPU_WHEELS)

gpu-check:
	$(GPU_PY) bench/gpu_check.py --wheels $(WHL)

# Training on a lent GPU brings its photos in two parts (bench/gpu_train.py, docs/training.md).
gpu-data: $(VENV)/.test
	$(PY) bench/gpu_train.py pack

clean:
	rm -rf $(VENV) out build *.egg-info
