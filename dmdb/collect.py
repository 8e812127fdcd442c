"""Moved to :mod:`dmdb.training` (named after `dmdb train`); the old import path keeps working."""

from dmdb.training import Echo as Echo
from dmdb.training import TrainReport as TrainReport
from dmdb.training import draw_masks as draw_masks
from dmdb.training import existing_draws as existing_draws
from dmdb.training import run_seeds as run_seeds
from dmdb.training import train as train
from dmdb.training import train_runs as train_runs

__all__ = ["Echo", "TrainReport", "draw_masks", "existing_draws", "run_seeds", "train",
           "train_runs"]
