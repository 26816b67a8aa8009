#!/usr/bin/env bash
# Install what Patchbank needs on a fresh Debian machine: system libraries, then a virtualenv at .venv with
# the project, its engine extra and dev tools, pinned by constraints.txt. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(libusb-1.0-0 libgomp1)   # open3d needs libusb-1.0; torch and faiss need OpenMP
[[ ${PATCHBANK_SETUP_TESTS:-1} == 1 ]] && apt_packages+=(redis-server)   # the tests start a real Redis
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[engine,dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import faiss, open3d, timm, torch; print('patchbank engine ready: torch', torch.__version__)"
