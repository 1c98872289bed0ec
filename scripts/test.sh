#!/usr/bin/env bash
# Set up brisk on first use, lint, then run the test suite: scripts/test.sh [pytest args...]
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
cd "$BRISK_ROOT"
ruff check src tests scripts
ruff format --check src tests scripts
mypy src/brisk/whitening src/brisk/trainer src/brisk/config
# two workers by default (a later -n in the arguments wins); loadgroup keeps the tests marked
# xdist_group("slurm") on one worker, since they share the one SLURM cluster
exec python -m pytest -n 2 --dist loadgroup "$@"
