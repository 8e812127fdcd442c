"""`dmdb import-fit`: record a fit that dmdb did not compute, so the same SQL judges it.

Three kinds of file become an ordinary fit (solver ``'imported'``):

- **The authors' released datamodels**: a ``.pt`` dict with ``weight`` (N, M), ``bias``
  (M,) and optionally ``lam`` (M,), as their regression script saves it. Their solver
  standardises every mask column, so their predictor is
  ``bias + sum_i weight_i (x_i - mu_i) / sigma_i``; it is mapped to dmdb's mask space as
  ``theta_i = weight_i / sigma_i`` and ``b = bias - sum_i weight_i mu_i / sigma_i``. The
  authors did not release mu and sigma: they are measured on the database's runs at the
  fit's alpha, or (``alpha=A``) taken from Bernoulli(A) masks, ``mu = A`` and
  ``sigma = sqrt(A (1 - A))``.
- **A dense score matrix** ``.npy`` (N, M), or (M, N) with ``transpose``, from any other
  attribution method, with an optional bias ``.npy`` (M,). Without a bias the fit is
  *uncalibrated*: rank-based views (``lds``, ``top_influencers``) work, while
  ``predict_subset`` / ``predict_removal`` refuse it and ``brittleness`` leaves it out.
- **dmdb's own export** (a folder from ``dmdb export``, parquet or npy), so a fit moves
  between databases.

Everything is read and checked before one transaction writes the fit
(:func:`dmdb.catalog.record_fit`), which evaluates it on the chosen runs.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmdb.catalog import evaluate_fit, record_fit
from dmdb.db import Database
from dmdb.errors import FitError, InputError, UsageError

MIN_EVAL_RUNS = 3
EVAL_SETS = ("test", "all")
# Targets converted at a time: bounds the float64 copy of a (N, M) matrix to N x 1024.
TARGET_BLOCK = 1024
PT_SUFFIXES = (".pt", ".pth")


@dataclass
class Source:
    """A file read into mask space: what :func:`dmdb.catalog.record_fit` takes.

    weights : scipy CSR of shape (hi - lo, N); bias : float64 (hi - lo,)
    """

    fmt: str
    bias: np.ndarray
    weights: Any
    target_range: tuple[int, int]
    penalty: np.ndarray | None = None
    calibrated: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportReport:
    """What :func:`import_fit` recorded."""

    fit_id: int
    name: str
    fmt: str
    n_targets: int
    n_eval_runs: int
    eval_set: str
    alpha: float | None
    mean_lds: float
    mean_nnz: float
    calibrated: bool
    standardisation: str
    seconds: float

    def summary(self) -> str:
        lds = f"{self.mean_lds:.3f}" if np.isfinite(self.mean_lds) else "-"
        runs = "test runs" if self.eval_set == "test" else "runs (all but 'verify')"
        text = (f"fit {self.fit_id}: imported {self.name!r} ({FORMAT_NAMES[self.fmt]}), "
                f"{self.n_targets} targets, mean LDS {lds} on {self.n_eval_runs} {runs}, "
                f"mean non-zeros {self.mean_nnz:.1f}")
        if self.standardisation:
            text += f"; {self.standardisation}"
        if not self.calibrated:
            text += ("; uncalibrated (no bias): lds and top_influencers work, predict_subset "
                     "and predict_removal refuse it")
        return text


FORMAT_NAMES = {
    "authors-pt": "the authors' .pt layout",
    "scores-npy": "a score matrix .npy",
    "dmdb-parquet": "a dmdb export, parquet",
    "dmdb-npy": "a dmdb export, npy",
}


def import_fit(
    db: Database,
    path: str | Path,
    *,
    name: str | None = None,
    alpha: float | None = None,
    eval_set: str = "test",
    transpose: bool = False,
    bias: str | Path | None = None,
    force: bool = False,
) -> ImportReport:
    """Record the attribution matrix in ``path`` as a new fit of ``db``.

    Parameters
    ----------
    path : .pt file, .npy file, or a folder written by ``dmdb export``
        See the module docstring for the layouts.
    name : str, optional
        The method's name (default: the file's name without its suffix); unique.
    alpha : float, optional
        The subset fraction the matrix was fitted at: it sets ``fits.alpha`` and the
        evaluation runs are those at alpha. For a ``.pt`` it also means mu = alpha and
        sigma = sqrt(alpha (1 - alpha)) instead of statistics of the database's runs.
        Default: the alpha of the database's runs when they all share one.
    eval_set : {'test', 'all'}
        Evaluate on the test split, or on every run except 'verify' runs (none of
        which fitted an imported matrix).
    transpose : bool
        A score ``.npy`` is (M, N) rather than (N, M).
    bias : path of a float .npy of shape (M,), optional
        The score matrix's bias; without one it is uncalibrated.
    force : bool
        Import a file whose content was imported before (under another name).
    """
    started = time.perf_counter()
    source_path = Path(path)
    fmt = detect_format(source_path)
    _check_options(fmt, alpha, eval_set, transpose, bias)
    digest = content_sha256(source_path)
    _check_not_imported(db, digest, force)
    name = _check_name(db, name if name is not None else _default_name(source_path))
    fit_alpha = alpha if alpha is not None else _single_alpha(db)
    runs = _eval_runs(db, eval_set, fit_alpha)
    source = _read(db, fmt, source_path, alpha=alpha, fit_alpha=fit_alpha, transpose=transpose,
                   bias=None if bias is None else Path(bias))
    lo, hi = source.target_range
    metrics = evaluate_fit(db, source.bias, source.weights, runs, lo)
    if not source.calibrated:
        # Without a bias the squared error measures nothing; the correlations stand.
        metrics = (np.full(hi - lo, np.nan), metrics[1], metrics[2])
    parameters = {
        "name": name, "format": fmt, "source": source_path.name, "source_sha256": digest,
        "eval": eval_set, "eval_alpha": fit_alpha, "calibrated": source.calibrated,
        "standardisation": "none", **source.parameters,
    }
    fit_id = record_fit(
        db, runs={"test": runs}, target_range=(lo, hi), bias=source.bias,
        weights=source.weights, solver="imported", parameters=parameters,
        penalty=source.penalty, alpha=fit_alpha, wall_seconds=time.perf_counter() - started,
        test_metrics=metrics,
    )
    spearman = metrics[2]
    return ImportReport(
        fit_id=fit_id, name=name, fmt=fmt, n_targets=hi - lo, n_eval_runs=len(runs),
        eval_set=eval_set, alpha=fit_alpha,
        mean_lds=float(np.nanmean(spearman)) if np.isfinite(spearman).any() else float("nan"),
        mean_nnz=float(source.weights.nnz / max(hi - lo, 1)), calibrated=source.calibrated,
        standardisation=_describe_standardisation(parameters),
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------- #
# Checks made before anything is read in full


def detect_format(path: Path) -> str:
    """'authors-pt', 'scores-npy', 'dmdb-parquet' or 'dmdb-npy' by name and folder content."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "datamodels.parquet").is_file() and (path / "weights.parquet").is_file():
            return "dmdb-parquet"
        if (path / "bias.npy").is_file() and (path / "weights.npz").is_file():
            return "dmdb-npy"
    elif path.suffix.lower() in PT_SUFFIXES:
        return "authors-pt"
    elif path.suffix.lower() == ".npy":
        return "scores-npy"
    raise UsageError(
        f"{path.name}: unknown format; import-fit reads the authors' .pt (weight, bias, lam), "
        "a score matrix .npy, or a folder written by `dmdb export`"
    )


def _check_options(fmt: str, alpha: float | None, eval_set: str, transpose: bool,
                   bias: str | Path | None) -> None:
    if eval_set not in EVAL_SETS:
        raise UsageError(f"--eval takes test or all, got {eval_set!r}")
    if alpha is not None and not 0 < alpha < 1:
        raise UsageError(f"--alpha is a subset fraction in (0, 1), got {alpha}")
    if fmt != "scores-npy" and (transpose or bias is not None):
        flag = "--transpose" if transpose else "--bias"
        raise UsageError(f"{flag} applies to a score matrix .npy only, not to "
                         f"{FORMAT_NAMES[fmt]}")


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            digest.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _default_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _check_name(db: Database, name: str) -> str:
    name = name.strip()
    if not name:
        raise UsageError("--name must not be empty")
    taken = db.sql("SELECT min(fit_id) FROM fits WHERE parameters->>'name' = ?",
                   [name]).column(0)[0].as_py()
    if taken is not None:
        raise UsageError(f"name {name!r} is already taken by fit {taken}; choose another "
                         "with --name")
    return name


def _check_not_imported(db: Database, digest: str, force: bool) -> None:
    if force:
        return
    row = db.sql("SELECT min(fit_id) AS fit_id, any_value(parameters->>'name') AS name "
                 "FROM fits WHERE parameters->>'source_sha256' = ?", [digest]).to_pylist()[0]
    if row["fit_id"] is not None:
        raise UsageError(f"this file was already imported as fit {row['fit_id']} "
                         f"({row['name']!r}); pass --force (and another --name) to import "
                         "it again")


def _single_alpha(db: Database) -> float | None:
    """The alpha of the database's runs when they all share one, else None."""
    alphas = db.sql("SELECT DISTINCT alpha FROM runs WHERE split <> 'verify' ORDER BY alpha"
                    ).column(0).to_pylist()
    return float(alphas[0]) if len(alphas) == 1 else None


def _eval_runs(db: Database, eval_set: str, alpha: float | None) -> np.ndarray:
    ids = db.run_ids(split="test" if eval_set == "test" else None, alpha=alpha)
    if len(ids) < MIN_EVAL_RUNS:
        kind = "test run(s)" if eval_set == "test" else "run(s) (besides 'verify' runs)"
        where = f" at alpha {alpha:g}" if alpha is not None else ""
        hint = " or use --eval all" if eval_set == "test" else ""
        raise FitError(f"only {len(ids)} {kind}{where} to evaluate on; an imported fit needs "
                       f"at least {MIN_EVAL_RUNS} (ingest the runs{hint})")
    return ids


# --------------------------------------------------------------------------- #
# Readers: each returns the fit in mask space, fully checked


def _read(db: Database, fmt: str, path: Path, *, alpha: float | None,
          fit_alpha: float | None, transpose: bool, bias: Path | None) -> Source:
    if fmt == "authors-pt":
        return _read_authors_pt(db, path, alpha=alpha, fit_alpha=fit_alpha)
    if fmt == "scores-npy":
        return _read_scores(db, path, transpose=transpose, bias=bias)
    if fmt == "dmdb-parquet":
        return _read_parquet_export(db, path)
    return _read_npy_export(db, path)


def _read_authors_pt(db: Database, path: Path, *, alpha: float | None,
                     fit_alpha: float | None) -> Source:
    exp = db.experiment
    n, m = exp.n_train, exp.n_targets
    content = _torch_load(path)
    if not isinstance(content, dict) or "weight" not in content:
        keys = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise InputError(f"{path.name}: no 'weight' in it (found {keys}); the authors' layout "
                         "is a dict with weight (N, M), bias (M,) and optionally lam (M,)")
    if "bias" not in content:
        raise InputError(f"{path.name}: no 'bias' in it; the authors' layout has weight (N, M) "
                         "and bias (M,)")
    weight = _tensor_array(content["weight"], path, "weight")
    _check_shape(weight, (n, m), path, "weight", "(N, M)", (n, m))
    raw_bias = _vector(_tensor_array(content["bias"], path, "bias"), m, path, "bias")
    penalty = None
    if content.get("lam") is not None:
        penalty = _vector(_tensor_array(content["lam"], path, "lam"), m, path, "lam")
    mu, sigma, params = _standardisation(db, alpha, fit_alpha)
    # Columns with sigma 0 (an example in every run or in none) were constant features
    # to the authors' solver, whose weight stays 0; a non-zero weight there cannot be mapped.
    inv = np.divide(1.0, sigma, out=np.zeros(n), where=sigma > 0)
    weights, shift = _mask_space(weight, path, "weight", scale=inv, shift=mu * inv,
                                 zero_scale_hint=params)
    return Source("authors-pt", raw_bias - shift, weights, (0, m), penalty=penalty,
                  parameters=params)


def _torch_load(path: Path) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL (\S+)", str(e))
        what = f" ({found[0]})" if found else ""
        raise InputError(
            f"{path.name}: torch.load(weights_only=True) refused it: it holds a Python "
            f"object{what}, which could run code when unpickled; dmdb reads only tensors"
        ) from e
    except Exception as e:  # torch raises many kinds for a file that is not its own
        raise InputError(f"{path.name}: not a file torch.save wrote ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from e


def _tensor_array(value: Any, path: Path, key: str) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            value = value.to_dense()
        if value.is_complex() or value.dtype == torch.bool:
            raise InputError(f"{path.name}: {key} has dtype {value.dtype}; it must be real")
        # float32 stays float32 (no copy of a large weight); blocks go to float64 later.
        wide = torch.float64 if value.dtype == torch.float64 else torch.float32
        return value.detach().to(wide).numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path.name}: {key} is a {type(value).__name__}, not a tensor") from e
    return array


def _standardisation(db: Database, alpha: float | None,
                     fit_alpha: float | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """mu, sigma (N,) of the mask columns, and how they were found (for fits.parameters)."""
    n = db.experiment.n_train
    if alpha is not None:
        return (np.full(n, alpha), np.full(n, np.sqrt(alpha * (1 - alpha))),
                {"standardisation": "alpha", "standardisation_alpha": alpha})
    if fit_alpha is None:
        alphas = db.sql("SELECT DISTINCT alpha FROM runs WHERE split <> 'verify' ORDER BY 1"
                        ).column(0).to_pylist()
        if not alphas:
            raise UsageError("no runs to measure the mask means and deviations on; ingest the "
                             "runs the weights were fitted on, or give --alpha A "
                             "(mu = A, sigma = sqrt(A(1-A)))")
        raise UsageError(f"the runs have several alphas ({', '.join(f'{a:g}' for a in alphas)}); "
                         "give --alpha A, the one the weights were fitted at "
                         "(mu = A, sigma = sqrt(A(1-A)))")
    count = np.zeros(n)
    runs = 0
    for _, masks, _ in db.iter_runs(alpha=fit_alpha):
        count += masks.sum(axis=0)
        runs += len(masks)
    mu = count / runs
    # The authors' solver uses the population deviation, sqrt(E[x^2] - E[x]^2).
    sigma = np.sqrt(np.clip(mu - mu * mu, 0, None))
    return mu, sigma, {"standardisation": "runs", "standardisation_alpha": fit_alpha,
                       "standardisation_runs": runs}


def _read_scores(db: Database, path: Path, *, transpose: bool, bias: Path | None) -> Source:
    exp = db.experiment
    n, m = exp.n_train, exp.n_targets
    scores = _load_npy(path, "scores")
    shape, layout = ((m, n), "(M, N) with --transpose") if transpose else ((n, m), "(N, M)")
    _check_shape(scores, shape, path, "the score matrix", layout, (n, m),
                 hint="" if transpose else " (pass --transpose for (M, N))")
    params: dict[str, Any] = {"transpose": transpose}
    bias_values = np.zeros(m)
    if bias is not None:
        if bias.suffix.lower() != ".npy" or not bias.is_file():
            raise UsageError(f"--bias {bias}: give an existing .npy file of shape (M,)")
        bias_values = _vector(_load_npy(bias, "bias"), m, bias, "bias")
        params |= {"bias_source": bias.name, "bias_sha256": content_sha256(bias)}
    weights, _ = _mask_space(scores, path, "the score matrix", transpose=transpose)
    return Source("scores-npy", bias_values, weights, (0, m), calibrated=bias is not None,
                  parameters=params)


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        # Memory-mapped: a (N, M) matrix is converted a block of targets at a time.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{path.name}: {what} must be a numeric array, not Python objects "
                         f"({str(e).splitlines()[0]})") from e
    except OSError as e:
        raise InputError(f"{path.name}: not a .npy file numpy can read ({e})") from e
    if not isinstance(array, np.ndarray) or not (
            np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{path.name}: {what} must hold real numbers, got dtype "
                         f"{getattr(array, 'dtype', type(array).__name__)}")
    return array


def _read_parquet_export(db: Database, path: Path) -> Source:
    import pyarrow.parquet as pq

    exp = db.experiment
    try:
        dm = pq.read_table(path / "datamodels.parquet")
        w = pq.read_table(path / "weights.parquet")
    except Exception as e:  # pyarrow's errors for a broken file vary by version
        raise InputError(f"{path.name}: cannot read the export's parquet files ({e})") from e
    for table, file, columns in ((dm, "datamodels.parquet", ("target_idx", "bias")),
                                 (w, "weights.parquet", ("target_idx", "train_idx", "weight"))):
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise InputError(f"{path.name}/{file}: no column {missing[0]}; is it from "
                             "`dmdb export --format parquet`?")
    targets = dm.column("target_idx").to_numpy(zero_copy_only=False).astype(np.int64)
    bias = dm.column("bias").to_numpy(zero_copy_only=False).astype(np.float64)
    penalty = None
    if "penalty" in dm.column_names:
        penalty = np.array([np.nan if v is None else v for v in dm.column("penalty").to_pylist()],
                           dtype=np.float64)
    lo, hi, order = _target_range(targets, exp.n_targets, path)
    rows = w.column("target_idx").to_numpy(zero_copy_only=False).astype(np.int64)
    cols = w.column("train_idx").to_numpy(zero_copy_only=False).astype(np.int64)
    values = w.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
    params: dict[str, Any] = {}
    if "fit_id" in dm.column_names and len(dm):
        params["source_fit_id"] = int(dm.column("fit_id")[0].as_py())
    weights = _coo_to_csr(rows, cols, values, (lo, hi), exp.n_train, path)
    return Source("dmdb-parquet", _finite_vector(bias[order], path, "bias"), weights, (lo, hi),
                  penalty=None if penalty is None else penalty[order], parameters=params)


def _read_npy_export(db: Database, path: Path) -> Source:
    import scipy.sparse as sp

    exp = db.experiment
    n, m = exp.n_train, exp.n_targets
    bias = np.asarray(_load_npy(path / "bias.npy", "bias"), dtype=np.float64)
    _check_shape(bias, (m,), path / "bias.npy", "bias", "(M,)", (n, m))
    try:
        matrix = sp.load_npz(path / "weights.npz")
    except Exception as e:  # numpy and scipy raise several kinds for a bad archive
        raise InputError(f"{path.name}/weights.npz: not a scipy sparse matrix ({e})") from e
    _check_shape(matrix, (m, n), path / "weights.npz", "weights", "(M, N)", (n, m))
    # load_fit writes NaN for the targets outside the fit's range.
    fitted = np.flatnonzero(~np.isnan(bias))
    lo, hi, _ = _target_range(fitted, m, path)
    coo = matrix.tocoo()
    weights = _coo_to_csr(coo.row.astype(np.int64), coo.col.astype(np.int64),
                          coo.data.astype(np.float64), (lo, hi), n, path)
    return Source("dmdb-npy", _finite_vector(bias[lo:hi], path, "bias"), weights, (lo, hi))


# --------------------------------------------------------------------------- #
# Shared checks and conversions


def _check_shape(array: Any, shape: tuple[int, ...], path: Path, what: str, layout: str,
                 sizes: tuple[int, int], hint: str = "") -> None:
    if tuple(array.shape) != shape:
        n, m = sizes
        raise InputError(f"{path.name}: {what} has shape {tuple(array.shape)}, but this "
                         f"experiment has N={n} training examples and M={m} targets, so it "
                         f"must be {layout} = {shape}{hint}")


def _vector(array: np.ndarray, m: int, path: Path, key: str) -> np.ndarray:
    """A (M,) vector; a (1, M) or (M, 1) tensor is accepted as one."""
    if array.size != m or (array.ndim > 1 and sorted(array.shape)[:-1] != [1] * (array.ndim - 1)):
        raise InputError(f"{path.name}: {key} has shape {tuple(array.shape)}; it must be (M,) "
                         f"= ({m},), one value per target")
    return _finite_vector(array.reshape(m), path, key)


def _finite_vector(values: np.ndarray, path: Path, key: str) -> np.ndarray:
    bad = ~np.isfinite(values)
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path.name}: {key} is {values[t]} for target {t}; it must be finite")
    return values.astype(np.float64)


def _mask_space(matrix: np.ndarray, path: Path, what: str, *, transpose: bool = False,
                scale: np.ndarray | None = None, shift: np.ndarray | None = None,
                zero_scale_hint: dict[str, Any] | None = None) -> tuple[Any, np.ndarray]:
    """(N, M) weights (``transpose``: (M, N)) as CSR (M, N), rows scaled, checked finite.

    Returns the CSR of ``matrix * scale[:, None]`` transposed and ``shift @ matrix`` (M,),
    both computed a block of targets at a time in float64.
    """
    import scipy.sparse as sp

    m = matrix.shape[0] if transpose else matrix.shape[1]
    blocks = []
    shifted = np.zeros(m)
    for lo in range(0, m, TARGET_BLOCK):
        hi = min(lo + TARGET_BLOCK, m)
        block = np.asarray(matrix[lo:hi].T if transpose else matrix[:, lo:hi], dtype=np.float64)
        bad = ~np.isfinite(block)
        if bad.any():
            i, t = np.argwhere(bad)[0]
            raise InputError(f"{path.name}: {what} is {block[i, t]} at training example {i}, "
                             f"target {lo + t}; every weight must be finite")
        if scale is not None:
            lost = (scale == 0) & (block != 0).any(axis=1)
            if lost.any():
                i = int(np.flatnonzero(lost)[0])
                raise InputError(_zero_sigma_message(path, i, zero_scale_hint or {}))
            if shift is not None:
                shifted[lo:hi] = shift @ block
            block = block * scale[:, None]
        blocks.append(sp.csr_matrix(block.T.astype(np.float32)))
    return sp.vstack(blocks, format="csr"), shifted


def _zero_sigma_message(path: Path, i: int, params: dict[str, Any]) -> str:
    a = params.get("standardisation_alpha")
    return (f"{path.name}: training example {i} is in every run or in none of the "
            f"{params.get('standardisation_runs')} runs at alpha {a:g}, so its deviation sigma "
            "is 0, but its weight is not; ingest the runs the weights were fitted on, or give "
            f"--alpha {a:g} (sigma = sqrt(A(1-A)))")


def _target_range(targets: np.ndarray, m: int, path: Path) -> tuple[int, int, np.ndarray]:
    """The contiguous range lo..hi the targets cover, and the order that sorts them."""
    if len(targets) == 0:
        raise InputError(f"{path.name}: the export holds no targets")
    order = np.argsort(targets, kind="stable")
    ordered = targets[order]
    lo, hi = int(ordered[0]), int(ordered[-1]) + 1
    if lo < 0 or hi > m:
        raise InputError(f"{path.name}: target_idx runs {lo}..{hi - 1}, outside this "
                         f"experiment's M={m} targets (0..{m - 1})")
    if not np.array_equal(ordered, np.arange(lo, hi)):
        raise InputError(f"{path.name}: its targets are not one contiguous range "
                         f"{lo}..{hi - 1} without repeats")
    return lo, hi, order


def _coo_to_csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                target_range: tuple[int, int], n: int, path: Path) -> Any:
    import scipy.sparse as sp

    lo, hi = target_range
    if len(rows) and (rows.min() < lo or rows.max() >= hi):
        raise InputError(f"{path.name}: a weight's target_idx lies outside the datamodels' "
                         f"targets {lo}..{hi - 1}")
    if len(cols) and (cols.min() < 0 or cols.max() >= n):
        raise InputError(f"{path.name}: train_idx runs up to {int(cols.max())}, but this "
                         f"experiment has N={n} training examples (0..{n - 1})")
    bad = ~np.isfinite(values)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path.name}: weight is {values[j]} at target {rows[j]}, training "
                         f"example {cols[j]}; every weight must be finite")
    keys = (rows - lo) * n + cols
    if len(np.unique(keys)) != len(keys):
        raise InputError(f"{path.name}: a (target_idx, train_idx) pair appears twice")
    return sp.csr_matrix((values.astype(np.float32), (rows - lo, cols)), shape=(hi - lo, n))


def _describe_standardisation(parameters: dict[str, Any]) -> str:
    kind = parameters.get("standardisation")
    a = parameters.get("standardisation_alpha")
    if kind == "alpha":
        return f"standardised with mu = {a:g}, sigma = sqrt({a:g}(1-{a:g})) (--alpha)"
    if kind == "runs":
        return (f"standardised with the mask means and deviations of "
                f"{parameters.get('standardisation_runs')} runs at alpha {a:g}")
    return ""

