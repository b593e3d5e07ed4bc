#!/usr/bin/env bash
# Print the path of a Python 3.10 interpreter (Rasa 3.6 runs on 3.8-3.10 only).
# Looks at $PYTHON, python3.10 on PATH, then pyenv; explains what to install when none is found.
set -euo pipefail

is_supported() {
  "$1" -c 'import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 10) else 1)' 2>/dev/null
}

candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
for name in python3.10 python3.9 python3.8; do
  command -v "$name" >/dev/null 2>&1 && candidates+=("$(command -v "$name")")
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for dir in "$root"/versions/3.10.* "$root"/versions/3.9.* "$root"/versions/3.8.*; do
    [ -x "$dir/bin/python" ] && candidates+=("$dir/bin/python")
  done
fi

for py in "${candidates[@]}"; do
  if is_supported "$py"; then
    echo "$py"
    exit 0
  fi
done

cat >&2 <<'MSG'
error: no Python 3.10 interpreter found (Rasa 3.6.21 runs on Python 3.8-3.10 only).
Install one of these, then run the command again:
  - Debian/Ubuntu:  sudo apt-get install python3.10 python3.10-venv
  - pyenv:          pyenv install 3.10.13
  - macOS:          brew install python@3.10
Or point PYTHON at an interpreter: make run PYTHON=/path/to/python3.10
MSG
exit 1
