"""Plug-in trainers for tests/test_cluster.py, named 'tests.cluster_plugins:<fn>'."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tests.plugin_examples import centroid


def flaky_once(mask: np.ndarray, seed: int) -> np.ndarray:
    """Fails the first time it sees a seed (attempts recorded in $DMDB_FLAKY_DIR), then works.

    A Ray task that hits the failure is retried and must land its runs exactly once.
    """
    marker = Path(os.environ["DMDB_FLAKY_DIR"]) / f"seed-{seed}"
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"first attempt at seed {seed} fails on purpose")
    return centroid(mask, seed)
