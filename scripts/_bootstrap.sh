# Sourced by train.sh and test.sh: create .venv on first use and install brisk (editable) with its
# pinned dependencies; later calls reinstall only when pyproject.toml changed.
set -euo pipefail
BRISK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BRISK_VENV="${BRISK_VENV:-$BRISK_ROOT/.venv}"

if [ ! -x "$BRISK_VENV/bin/python" ]; then
  base_python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  if ! "$base_python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "brisk needs Python 3.11 (found $("$base_python" --version 2>&1) at $base_python); set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  echo "creating $BRISK_VENV" >&2
  "$base_python" -m venv "$BRISK_VENV"
fi

stamp="$BRISK_VENV/.brisk-installed"
want="$(sha256sum "$BRISK_ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing brisk and its dependencies into $BRISK_VENV" >&2
  "$BRISK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$BRISK_ROOT[test]"
  echo "$want" > "$stamp"
fi
export PATH="$BRISK_VENV/bin:$PATH"
