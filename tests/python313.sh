#!/usr/bin/env bash
# Print the path of a Python 3.13 that can make a virtualenv, for .venv-bigquery (the
# Makefile): local-bigquery requires Python >=3.13,<3.14. Looked for in this order:
#   1. pyenv's 3.13.x (the python machine image ships one), the newest patch release;
#   2. a python3.13 on PATH (Debian 13's own python3 is 3.13), with Debian's
#      python3.13-venv added when its ensurepip is missing;
#   3. Debian's python3.13 package, where the release has one;
#   4. `pyenv install 3.13`, which builds from python.org's sources: only where that site
#      is reachable (it is not from the project's machines, whose registries are PyPI,
#      Debian and npm), so it is the last resort.
# Exits 1 with the reason on stderr when none works.
set -euo pipefail

usable() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 13))' \
    >/dev/null 2>&1; }

apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

pyenv_root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
newest_pyenv() {
    { ls -d "$pyenv_root"/versions/3.13.*/bin/python3.13 2>/dev/null || true; } | sort -V | tail -1
}

py=$(newest_pyenv)
if [ -n "$py" ] && usable "$py"; then echo "$py"; exit 0; fi

if py=$(command -v python3.13); then
    usable "$py" || apt_install python3.13-venv || true
    if usable "$py"; then echo "$py"; exit 0; fi
fi

if apt_install python3.13 python3.13-venv && py=$(command -v python3.13) && usable "$py"; then
    echo "$py"; exit 0
fi

if command -v pyenv >/dev/null 2>&1 && pyenv install --skip-existing 3.13 >&2; then
    py=$(newest_pyenv)
    if [ -n "$py" ] && usable "$py"; then echo "$py"; exit 0; fi
fi

echo "no Python 3.13 found for .venv-bigquery (local-bigquery needs it): not in pyenv" \
    "($pyenv_root/versions), not on PATH, not from Debian's packages, and pyenv could" \
    "not build one" >&2
exit 1
