#!/usr/bin/env bash
# Install what Patchbank needs on a fresh Debian machine: system libraries, then a virtualenv with the
# project, its engine extra and dev tools, pinned by constraints.txt. Safe to run again.
#
#   bash scripts/setup.sh                                   # .venv with python3.11 (else python3)
#   PYTHON=python3.12 VENV=.venv-3.12 bash scripts/setup.sh # another Python, in its own venv
#
# PYTHON is a command or a path. A pythonX.Y that is not on PATH (or is only a pyenv shim of a version not
# selected) is looked up under $(pyenv root)/versions/X.Y.*/bin/. VENV is relative to the repository root.
# PATCHBANK_SETUP_DEPS_ONLY=1 installs the pinned dependencies but not the project, so it writes nothing
# into the checkout (CI runs it in the background while tests run); a later plain run adds the project.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(libusb-1.0-0 libgomp1)   # open3d needs libusb-1.0; torch and faiss need OpenMP
# the tests start a real Redis, and drive Debian's Chromium (tests/browser: Playwright, which downloads nothing)
[[ ${PATCHBANK_SETUP_TESTS:-1} == 1 ]] && apt_packages+=(redis-server chromium)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

die() { echo "setup.sh: $*" >&2; exit 1; }

[[ ${PATCHBANK_SETUP_TESTS:-1} != 1 || -x /usr/bin/chromium ]] \
  || die "the chromium package is installed but /usr/bin/chromium is missing; the browser tests need it"

# Print the path of a working interpreter for $1 (a command or a path), or nothing.
resolve_python() {
  local want=$1 found="" root candidate
  if [[ $want == */* ]]; then
    [[ -x $want ]] && found=$want
  elif found=$(command -v "$want" 2>/dev/null); then
    "$found" -c 'import sys' >/dev/null 2>&1 || found=""   # a pyenv shim of a version that is not selected
  fi
  if [[ -z $found && $want =~ ^python([0-9]+\.[0-9]+)$ ]]; then
    root=$(pyenv root 2>/dev/null) || root=${PYENV_ROOT:-$HOME/.pyenv}
    # the newest X.Y.N build; free-threaded (3.13.0t) and other suffixed builds do not match the pattern
    for candidate in $(compgen -G "$root/versions/${BASH_REMATCH[1]}.*/bin/$want" | sort -V); do
      [[ $candidate =~ /versions/[0-9]+\.[0-9]+\.[0-9]+/bin/ ]] && found=$candidate
    done
  fi
  [[ -n $found ]] && "$found" -c 'import sys' >/dev/null 2>&1 && echo "$found"
  return 0
}

if [[ -n ${PYTHON:-} ]]; then
  python=$(resolve_python "$PYTHON")
  [[ -n $python ]] || die "PYTHON=$PYTHON: no such interpreter on PATH or under \$(pyenv root)/versions/"
else
  python=$(resolve_python python3.11)
  [[ -n $python ]] || python=$(resolve_python python3)
  [[ -n $python ]] || die "no python3.11 or python3 found; set PYTHON"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$python is Python $("$python" -c 'import platform; print(platform.python_version())'); Patchbank needs 3.11+"

venv=${VENV:-.venv}
want_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ -e $venv ]]; then
  if have_version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    [[ $have_version == "$want_version" ]] \
      || die "$venv is a Python $have_version venv, not $want_version ($python); remove it or set VENV"
  elif [[ -f $venv/pyvenv.cfg ]]; then  # a venv whose interpreter is gone (or half made): make it again
    "$python" -m venv --clear "$venv"
  else
    die "$venv exists and is not a virtualenv; remove it or set VENV"
  fi
else
  "$python" -m venv "$venv"
fi

# pip, quietly, never hiding its exit status. Two kinds of noise are dropped: the warning of the extra
# local indexes of some machines for every package they lack, and setuptools' ten-line notice on every
# editable install (at most 12 lines from its first, so that nothing else can go missing).
pip_q() {
  local out status=0
  out=$("$venv/bin/python" -m pip "$@" 2>&1) || status=$?
  [[ -z $out ]] || awk '
    /BuildBackendWarning: Editable installation\./ { skip = 12 }
    skip > 0 { skip--; if (/with strategy, WheelFile/) skip = 0; next }
    !/^WARNING: Location/' <<<"$out" >&2
  return "$status"
}
pip_q install -q --upgrade pip || die "upgrading pip in $venv failed"
if [[ ${PATCHBANK_SETUP_DEPS_ONLY:-0} == 1 ]]; then
  pip_q install -q -r constraints.txt || die "pip install of constraints.txt into $venv failed"
  what="dependencies (without the project)"
else
  pip_q install -q -c constraints.txt -e ".[engine,dev]" || die "pip install into $venv failed"
  what=engine
fi
"$venv/bin/python" -c "
import platform, faiss, open3d, timm, torch
print('patchbank $what ready in $venv: Python', platform.python_version() + ', torch', torch.__version__)
"
