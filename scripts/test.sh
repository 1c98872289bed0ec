#!/usr/bin/env bash
# Set up brisk on first use with the test extras (ruff, mypy, pytest, the plugins the tests run), lint,
# then run the tests not marked slow (about 5 minutes on 2 cores):
#   scripts/test.sh [pytest args...]      e.g. -m slow (only the slow ones), -m "" (all), -k resume
BRISK_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
cd "$BRISK_ROOT"
ruff check src tests scripts
ruff format --check src tests scripts
mypy src/brisk/whitening src/brisk/trainer src/brisk/run src/brisk/config
# two workers by default (a later -n in the arguments wins, as does a later -m); loadgroup keeps the
# tests marked xdist_group("slurm") on one worker, since they share the one SLURM cluster
exec python -m pytest -n 2 --dist loadgroup -m "not slow" "$@"
