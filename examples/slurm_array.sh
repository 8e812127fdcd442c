#!/bin/bash
# Train K runs of an experiment as a Slurm job array of W workers (edit the top lines).
# Before:  dmdb spec exp.duckdb --alpha 0.5 --out /shared/spec.json
# After:   dmdb ingest exp.duckdb /shared/shards   (or, while it runs: --follow 60)
#SBATCH --job-name=dmdb-train
#SBATCH --array=0-63            # W = 64 workers: indices 0..63
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue               # a preempted task reruns; finished shards are skipped
K=300000                        # draws 0..K-1; worker i trains the draws d with d % W == i
dmdb train --spec /shared/spec.json --runs "$K" --device cuda --quiet \
  --shard-dir /shared/shards --num-workers "$SLURM_ARRAY_TASK_COUNT" \
  --worker-index "$SLURM_ARRAY_TASK_ID"
