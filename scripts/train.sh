#!/usr/bin/env bash
# Set up brisk on first use (the runtime only: no test tools), then train:
#   scripts/train.sh [hydra overrides...]
#   scripts/train.sh                                  # digits, about a minute on a laptop CPU
#   scripts/train.sh task=cifar whitening=recursive   # CIFAR-10 under paths.data_dir, 160 epochs
#   scripts/train.sh experiment=cifar10_cpu_budget whitening=recursive   # the same sized for a CPU
BRISK_EXTRAS=""
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
exec train "$@"
