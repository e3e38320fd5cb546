#!/usr/bin/env bash
# Accuracy on MovieLens 100K, as recorded in BENCHMARKS.md.
# Usage: benchmarks/accuracy.sh [PATH-TO-ml-100k] (default ../shared/data/ml-100k)
set -euo pipefail
ML=${1:-../shared/data/ml-100k}
mkdir -p out
sieve evaluate --data "movielens-100k:$ML" --split random:0.75 --seed 42 \
  --models popular,itemknn,ease,als,bpr --k 10 --json out/ml100k-random.json --report out/ml100k-random.html
sieve evaluate --data "movielens-100k:$ML" --split "folds:$ML" \
  --models biasedmf --k 10 --json out/ml100k-folds.json
