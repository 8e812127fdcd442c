-- 0001: the core tables of a dmdb database (one experiment per file).
-- Rendered with {n_targets}: the margins column is FLOAT[n_targets], so this
-- migration is templated by the experiment's number of targets.

CREATE TABLE dmdb_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    applied_at TIMESTAMP NOT NULL
);

CREATE TABLE dmdb_meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR
);

-- One row: the training set, the target set and the experiment seed.
CREATE TABLE experiment (
    name          VARCHAR NOT NULL,
    dataset       VARCHAR,            -- built-in dataset name, or NULL
    n_train       INTEGER NOT NULL,   -- N: mask length
    n_targets     INTEGER NOT NULL,   -- M: margins per run
    seed          BIGINT NOT NULL,    -- draws masks and assigns splits
    val_fraction  DOUBLE NOT NULL,
    test_fraction DOUBLE NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    config        JSON
);

-- Training examples (the datamodel's features) and targets (its outputs).
-- pixels holds a flattened image where the dataset has one, for reports.
CREATE TABLE train_examples (
    train_idx INTEGER PRIMARY KEY,
    label     INTEGER,
    pixels    FLOAT[]
);

CREATE TABLE targets (
    target_idx INTEGER PRIMARY KEY,
    label      INTEGER,
    pixels     FLOAT[]
);

-- One row per trained model.
CREATE TABLE runs (
    run_id       BIGINT PRIMARY KEY,
    mask_id      BIGINT NOT NULL,   -- identifies the mask; repeats share it
    alpha        DOUBLE NOT NULL,   -- the subset fraction the mask was drawn at
    seed         BIGINT,            -- the training seed, where known
    split        VARCHAR NOT NULL CHECK (split IN ('fit', 'val', 'test', 'verify')),
    created_at   TIMESTAMP NOT NULL,
    content_hash BIGINT NOT NULL,   -- of (mask, margins): detects conflicting re-ingests
    mask_size    INTEGER NOT NULL,  -- |S|, the number of ones in the mask
    target_acc   DOUBLE,            -- fraction of targets with margin > 0
    train_acc    DOUBLE,            -- accuracy on the run's own subset, where known
    trainer      VARCHAR,
    source       VARCHAR,           -- where the run came from (trainer, file)
    info         JSON               -- any further provenance
);

-- Masks bit-packed with numpy's packbits (big-endian bit order): bit i of the
-- blob is train example i, so get_bit(mask::BIT, i) reads it. See view mask_bits.
CREATE TABLE masks (
    run_id BIGINT PRIMARY KEY,
    mask   BLOB NOT NULL
);

CREATE TABLE margins (
    run_id  BIGINT PRIMARY KEY,
    margins FLOAT[{n_targets}] NOT NULL
);

-- Shard files already ingested, so that ingesting one again is a no-op.
CREATE TABLE ingested_files (
    path        VARCHAR NOT NULL,
    size        BIGINT NOT NULL,
    mtime_ns    BIGINT NOT NULL,
    n_runs      BIGINT NOT NULL,
    ingested_at TIMESTAMP NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);

-- Fits and their results.
CREATE TABLE fits (
    fit_id        INTEGER PRIMARY KEY,
    created_at    TIMESTAMP NOT NULL,
    solver        VARCHAR NOT NULL,
    device        VARCHAR,
    alpha         DOUBLE,            -- NULL: runs of every alpha
    n_fit         INTEGER NOT NULL,
    n_val         INTEGER NOT NULL,
    n_test        INTEGER NOT NULL,
    target_lo     INTEGER NOT NULL,  -- targets [target_lo, target_hi) were fitted
    target_hi     INTEGER NOT NULL,
    wall_seconds  DOUBLE,
    dmdb_version  VARCHAR,
    parameters    JSON
);

-- The runs each fit used, so that its metrics do not drift as runs are added.
CREATE TABLE fit_runs (
    fit_id INTEGER NOT NULL,
    run_id BIGINT NOT NULL,
    split  VARCHAR NOT NULL,
    PRIMARY KEY (fit_id, run_id)
);

CREATE TABLE datamodels (
    fit_id        INTEGER NOT NULL,
    target_idx    INTEGER NOT NULL,
    bias          DOUBLE NOT NULL,
    penalty       DOUBLE NOT NULL,   -- the chosen L1 strength
    nnz           INTEGER NOT NULL,
    val_mse       DOUBLE,
    test_mse      DOUBLE,
    test_pearson  DOUBLE,
    test_spearman DOUBLE,            -- the linear datamodeling score (LDS)
    PRIMARY KEY (fit_id, target_idx)
);

-- Non-zero weights only, in mask space: prediction = bias + sum of weight over the subset.
CREATE TABLE weights (
    fit_id     INTEGER NOT NULL,
    target_idx INTEGER NOT NULL,
    train_idx  INTEGER NOT NULL,
    weight     FLOAT NOT NULL
);
