"""`dmdb ingest`: turn paths on disk into a Source and hand it to Database.ingest."""

from __future__ import annotations

from pathlib import Path

from dmdb.db import Database, IngestResult, connect
from dmdb.errors import UsageError
from dmdb.runs import check_alpha
from dmdb.sources import NpySource, ShardSource, Source, find_shards, is_store, store_source

# Warn when the masks' density disagrees with the declared alpha by more than this.
DENSITY_TOLERANCE = 0.02


def _check_alpha(alpha: float | None, what: str) -> float:
    if alpha is None:
        raise UsageError(
            f"--alpha is required for {what}: the subset fraction the masks were drawn at"
        )
    return check_alpha(alpha)


def _density_warning(src: NpySource) -> str | None:
    density = src.mask_density()
    if abs(density - src.alpha) > DENSITY_TOLERANCE:
        return (
            f"{src.label}: the masks' density is {density:.3f}, but --alpha is {src.alpha}; "
            "check --alpha"
        )
    return None


def plan_sources(
    paths: list[Path],
    *,
    masks: Path | None = None,
    margins: Path | None = None,
    alpha: float | None = None,
    masks_key: str = "masks",
    margins_key: str = "margins",
) -> list[Source]:
    """Resolve command-line inputs into Sources, opening (not yet reading) every file."""
    sources: list[Source] = []
    if (masks is None) != (margins is None):
        raise UsageError("--masks and --margins go together")
    if masks is not None and margins is not None:
        sources.append(NpySource(masks, margins, _check_alpha(alpha, "--masks/--margins")))
    shard_files: list[Path] = []
    for path in paths:
        if is_store(path):
            sources.append(
                store_source(path, _check_alpha(alpha, f"store {path}"), masks_key, margins_key)
            )
        else:
            shard_files += find_shards(path)
    if shard_files:
        sources.append(ShardSource(shard_files))
    if not sources:
        raise UsageError(
            "nothing to ingest: give shard files/folders, a store, or --masks/--margins"
        )
    return sources


def ingest_paths(
    db: str | Database,
    paths: list[Path],
    *,
    masks: Path | None = None,
    margins: Path | None = None,
    alpha: float | None = None,
    masks_key: str = "masks",
    margins_key: str = "margins",
    progress: bool = False,
) -> IngestResult:
    """Ingest every input; all inputs are validated before any is written."""
    database = db if isinstance(db, Database) else connect(db)
    sources = plan_sources(
        paths, masks=masks, margins=margins, alpha=alpha, masks_key=masks_key,
        margins_key=margins_key,
    )
    source: Source = sources[0] if len(sources) == 1 else MultiSource(sources)
    warnings = [w for s in sources if isinstance(s, NpySource) if (w := _density_warning(s))]
    result = database.ingest(source, progress=progress)
    result.warnings += warnings
    return result


class MultiSource(Source):
    """Several sources ingested as one all-or-nothing input."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.files = [f for s in sources for f in s.files]
        self.label = ", ".join(s.label for s in sources)

    def batches(self, n_train: int, n_targets: int):  # type: ignore[no-untyped-def]
        for s in self.sources:
            for where, batch in s.batches(n_train, n_targets):
                if batch.source is None:
                    batch.source = s.label
                yield where, batch
