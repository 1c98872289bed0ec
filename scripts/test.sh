#!/usr/bin/env bash
# Set up brisk on first use, lint, then run the test suite: scripts/test.sh [pytest args...]
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
cd "$BRISK_ROOT"
ruff check src tests scripts
ruff format --check src tests scripts
exec python -m pytest "$@"
