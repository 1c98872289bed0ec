# Sourced by train.sh and test.sh: create .venv on first use and install brisk (editable) with its
# pinned dependencies and the extras the calling script asks for in BRISK_EXTRAS (train.sh: none,
# the runtime only; test.sh: "test"). Later calls install again only when pyproject.toml changed
# or an extra is asked for that is not installed yet; the extras installed before are kept.
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

# The stamp: line 1 the hash of the pyproject.toml installed, line 2 "extras=a,b". A stamp of one
# line was written when every set-up installed [test].
stamp="$BRISK_VENV/.brisk-installed"
want="$(sha256sum "$BRISK_ROOT/pyproject.toml" | cut -d' ' -f1)"
wanted="${BRISK_EXTRAS:-}"
installed=""
have=""
if [ -f "$stamp" ]; then
  installed="$(sed -n 1p "$stamp")"
  have="$(sed -n 's/^extras=//p' "$stamp")"
  grep -q '^extras=' "$stamp" || have="test"
fi
missing=""
for extra in ${wanted//,/ }; do
  case ",$have," in *",$extra,"*) ;; *) missing="$missing $extra" ;; esac
done
if [ "$installed" != "$want" ] || [ -n "$missing" ]; then
  extras="$(printf '%s\n' ${have//,/ } ${wanted//,/ } | grep -v '^$' | sort -u | paste -sd, - || true)"
  echo "installing brisk${extras:+[$extras]} and its dependencies into $BRISK_VENV" >&2
  "$BRISK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$BRISK_ROOT${extras:+[$extras]}"
  printf '%s\nextras=%s\n' "$want" "$extras" > "$stamp"
fi
export PATH="$BRISK_VENV/bin:$PATH"
