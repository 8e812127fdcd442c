"""Runs in canonical form: validation, identity and splits.

Every source of runs (Arrow batches, shard files, npy matrices, trainers) is
turned into a :class:`RunBatch` of numpy arrays, validated with vectorised numpy
checks, and only then staged as Arrow for the SQL in ``ingest/``.

Run identity
------------
``run_id`` is the caller's when given. Otherwise it is a 63-bit hash of the
run's content (packed mask bytes and float32 margins), so that ingesting the same
runs twice does not duplicate them. ``mask_id`` is, unless given, a 63-bit hash
of the packed mask alone, so that runs repeating a mask with other seeds share
it. ``content_hash`` is always the content hash; a run_id that arrives again with
another content_hash is an error, never an overwrite.

Splits
------
``split`` is derived from ``mask_id`` and the experiment seed: ``u = mix(seed,
mask_id) / 2**64``; 'test' if ``u < test_fraction``, else 'val' if ``u <
test_fraction + val_fraction``, else 'fit' (defaults 10% / 10% / 80%). Repeats
of a mask therefore never straddle splits. Runs made by checks carry 'verify'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dmdb.codec import binary_rows as binary_rows  # the old import paths keep working
from dmdb.codec import margins_array, mask_array, utcnow
from dmdb.codec import pack_masks as pack_masks
from dmdb.codec import unpack_masks as unpack_masks
from dmdb.errors import InputError, UsageError

_M64 = (1 << 64) - 1
# Fixed keys of the multilinear hashes below; changing them changes run identity.
_HASH_SEED_MASK = 0x6D61736B5F696473
_HASH_SEED_RUN = 0x72756E5F636F6E74
_HASH_SEED_DRAWN = 0x647261776E5F6964


def splitmix64(x: Any) -> Any:
    """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic).

    The one mixing function behind run identity, splits, and trained masks and seeds.
    """
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hash_keys(seed: int, n: int) -> np.ndarray:
    return splitmix64(np.uint64(seed) + np.arange(n, dtype=np.uint64) * np.uint64(2654435761))


def row_hash(parts: np.ndarray | list[np.ndarray], seed: int) -> np.ndarray:
    """A 63-bit hash of each row of a 2-D byte array, or of several side by side.

    A multilinear hash over 64-bit words with fixed pseudo-random odd keys,
    finalised by splitmix64. Rows are hashed in small blocks, so the parts are
    never concatenated whole and no product array the size of the input is made:
    several GB/s in numpy, which matters because ingest is measured against np.save.

    Parameters
    ----------
    parts : uint8 array of shape (k, n_bytes), or a list of (k, n_i) uint8 arrays
        A list is hashed as the row-wise concatenation of its arrays.
    seed : int
        Selects the key family (mask ids and run contents use different ones).

    Returns
    -------
    int64 array of shape (k,), non-negative
    """
    parts = [parts] if isinstance(parts, np.ndarray) else list(parts)
    k = parts[0].shape[0]
    n_bytes = sum(p.shape[1] for p in parts)
    pad = (-n_bytes) % 8
    keys = _hash_keys(seed, (n_bytes + pad) // 8) | np.uint64(1)
    acc = np.empty(k, np.uint64)
    block = max(1, (1 << 20) // max(n_bytes + pad, 1))  # about 1 MB of rows at a time
    for i in range(0, k, block):
        j = min(i + block, k)
        pieces = [p[i:j] for p in parts]
        if pad:
            pieces.append(np.zeros((j - i, pad), np.uint8))
        rows = np.concatenate(pieces, axis=1)  # one small contiguous block
        with np.errstate(over="ignore"):
            acc[i:j] = np.einsum("ij,j->i", rows.view(np.uint64), keys)
    with np.errstate(over="ignore"):
        acc += np.uint64(n_bytes)
    return (splitmix64(acc) >> np.uint64(1)).astype(np.int64)


def drawn_run_ids(
    fingerprint: str, alpha: float | np.ndarray, draws: np.ndarray, repeats: np.ndarray
) -> np.ndarray:
    """The run_id of runs drawn by dmdb: a 63-bit hash of (fingerprint, alpha, draw, repeat).

    Masks and seeds are functions of these, so a retried or repeated training of
    the same draw gets the same id whatever its margins (GPU kernels are not
    bit-deterministic), and lands once.
    """
    k = len(draws)
    alpha_key = np.round(np.broadcast_to(np.asarray(alpha, np.float64), (k,)) * 1e6)
    words = np.empty((k, 4), np.uint64)
    words[:, 0] = np.uint64(int(fingerprint[:16], 16))
    words[:, 1] = alpha_key.astype(np.uint64)
    words[:, 2] = np.asarray(draws).astype(np.uint64)
    words[:, 3] = np.asarray(repeats).astype(np.uint64)
    return row_hash(words.view(np.uint8).reshape(k, 32), _HASH_SEED_DRAWN)


def _is_fingerprint(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def check_alpha(alpha: float) -> float:
    """An --alpha option checked to lie in (0, 1]."""
    if not 0 < alpha <= 1:
        raise UsageError(f"--alpha must be in (0, 1], got {alpha}")
    return float(alpha)


def assign_splits(
    mask_ids: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> np.ndarray:
    """The split of each mask id (see the module docstring); an object array of str."""
    mixed = splitmix64(mask_ids.astype(np.uint64) ^ splitmix64(np.uint64(seed & _M64)))
    u = (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    out = np.full(len(mask_ids), "fit", dtype=object)
    out[u < test_fraction + val_fraction] = "val"
    out[u < test_fraction] = "test"
    return out


@dataclass
class RunBatch:
    """Runs in canonical form.

    Attributes
    ----------
    masks : uint8 array of shape (k, ceil(N / 8))
        np.packbits of each 0/1 mask (big-endian bit order), padding bits zero.
    margins : float32 array of shape (k, M)
    alpha : float64 array of shape (k,)
    seed : int64 array of shape (k,), or None where the training seeds are unknown.
    run_id, mask_id : int64 arrays of shape (k,), or None to derive by hash.
    split : object array of str of shape (k,), or None to derive from mask_id.
    train_acc : float64 array of shape (k,), NaN where unknown.
    trainer, source : str or None, shared by the batch.
    info : list of JSON strings or None.
    draw, repeat : int64 arrays of shape (k,), or None: for runs drawn by dmdb, the
        draw index of the mask and the repeat (seed) index on it.
    fingerprint : str or None: the experiment fingerprint the runs were drawn for.
        With ``draw``, it makes the run's identity (see :func:`drawn_run_ids`).
    """

    masks: np.ndarray
    margins: np.ndarray
    alpha: np.ndarray
    seed: np.ndarray | None = None
    run_id: np.ndarray | None = None
    mask_id: np.ndarray | None = None
    split: np.ndarray | None = None
    train_acc: np.ndarray | None = None
    trainer: str | None = None
    source: str | None = None
    info: list[str | None] | None = None
    draw: np.ndarray | None = None
    repeat: np.ndarray | None = None
    fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def validate(batch: RunBatch, *, n_train: int, n_targets: int, where: str = "") -> None:
    """Check a batch against the experiment; raise InputError naming the first problem."""
    at = f"{where}: " if where else ""
    k = len(batch)
    n_bytes = (n_train + 7) // 8
    if batch.masks.ndim != 2 or batch.masks.shape[1] != n_bytes:
        got = batch.masks.shape[1] * 8 if batch.masks.ndim == 2 else batch.masks.shape
        raise InputError(
            f"{at}masks have {got} bits per run (packed), but the experiment has "
            f"n_train={n_train} ({n_bytes} bytes packed)"
        )
    pad = n_bytes * 8 - n_train
    if pad and k:
        tail = batch.masks[:, -1] & np.uint8((1 << pad) - 1)
        if tail.any():
            r = int(np.flatnonzero(tail)[0])
            raise InputError(f"{at}mask of row {r} sets bits beyond n_train={n_train}")
    if batch.margins.ndim != 2 or batch.margins.shape[0] != k:
        raise InputError(
            f"{at}{k} masks but margins of shape {batch.margins.shape}; need one row per mask"
        )
    if batch.margins.shape[1] != n_targets:
        raise InputError(
            f"{at}runs have {batch.margins.shape[1]} margins, but the experiment has "
            f"n_targets={n_targets}"
        )
    finite = np.isfinite(batch.margins).all(axis=1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{at}margins of row {r} contain NaN or inf")
    alpha = batch.alpha
    bad_alpha = ~((alpha > 0) & (alpha <= 1))
    if bad_alpha.any():
        r = int(np.flatnonzero(bad_alpha)[0])
        raise InputError(f"{at}alpha of row {r} is {alpha[r]}; alpha must be in (0, 1]")
    if batch.split is not None:
        bad = [s for s in batch.split if s is not None and s != "verify"]
        if bad:
            raise InputError(
                f"{at}split {bad[0]!r} given; only 'verify' may be set, "
                "fit/val/test are derived from mask_id"
            )
    if batch.draw is not None:
        if batch.fingerprint is None:
            raise InputError(f"{at}runs carry a draw index but no experiment fingerprint")
        negative = np.flatnonzero(batch.draw < 0)
        if len(negative):
            raise InputError(f"{at}draw of row {int(negative[0])} is negative")
        if not _is_fingerprint(batch.fingerprint):
            raise InputError(f"{at}fingerprint {batch.fingerprint!r} is not a dmdb fingerprint")
    if batch.run_id is not None:
        uniq, counts = np.unique(batch.run_id, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"{at}run_id {int(uniq[counts > 1][0])} appears twice in the input")


def complete(
    batch: RunBatch, *, seed: int, val_fraction: float, test_fraction: float
) -> pa.Table:
    """Derive identities and splits and return the batch as the staged Arrow table."""
    k = len(batch)
    margins = np.ascontiguousarray(batch.margins, dtype=np.float32)
    content = row_hash([batch.masks, margins.view(np.uint8).reshape(k, -1)], _HASH_SEED_RUN)
    mask_id = batch.mask_id if batch.mask_id is not None else row_hash(batch.masks, _HASH_SEED_MASK)
    repeat = batch.repeat
    if batch.draw is not None and repeat is None:
        repeat = np.zeros(k, np.int64)
    run_id = content
    if batch.run_id is not None:
        run_id = batch.run_id
    elif batch.draw is not None and batch.fingerprint is not None and repeat is not None:
        run_id = drawn_run_ids(batch.fingerprint, batch.alpha, batch.draw, repeat)
    split = assign_splits(mask_id, seed, val_fraction, test_fraction)
    if batch.split is not None:
        given = np.array([s is not None for s in batch.split])
        split[given] = np.asarray(batch.split, dtype=object)[given]
    ones = np.bitwise_count(batch.masks).sum(axis=1, dtype=np.int64)
    now = utcnow()
    seed_col = (
        pa.array(batch.seed, type=pa.int64()) if batch.seed is not None else pa.nulls(k, pa.int64())
    )
    train_acc = batch.train_acc if batch.train_acc is not None else np.full(k, np.nan)
    return pa.table(
        {
            "run_id": pa.array(run_id, type=pa.int64()),
            "mask_id": pa.array(mask_id, type=pa.int64()),
            "alpha": pa.array(batch.alpha, type=pa.float64()),
            "seed": seed_col,
            "split": pa.array(split.tolist(), type=pa.string()),
            "created_at": pa.array([now] * k, type=pa.timestamp("us")),
            "content_hash": pa.array(content, type=pa.int64()),
            "mask_size": pa.array(ones, type=pa.int32()),
            "target_acc": pa.array((margins > 0).mean(axis=1), type=pa.float64()),
            "train_acc": pa.array(train_acc, type=pa.float64(), from_pandas=True),
            "trainer": pa.array([batch.trainer] * k, type=pa.string()),
            "source": pa.array([batch.source] * k, type=pa.string()),
            "info": pa.array(batch.info if batch.info is not None else [None] * k, pa.string()),
            "mask": mask_array(batch.masks),
            "margins": margins_array(margins),
            "draw": pa.array(batch.draw, pa.int64()) if batch.draw is not None
            else pa.nulls(k, pa.int64()),
            "repeat": pa.array(repeat, pa.int32()) if repeat is not None
            else pa.nulls(k, pa.int32()),
            "fingerprint": pa.array([batch.fingerprint] * k, pa.string()),
        }
    )
