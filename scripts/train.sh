#!/usr/bin/env bash
# Set up brisk on first use, then train: scripts/train.sh [hydra overrides...]
#   scripts/train.sh                                  # digits, about a minute on a laptop CPU
#   scripts/train.sh task=cifar whitening=recursive   # CIFAR-10 under paths.data_dir
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
exec train "$@"
