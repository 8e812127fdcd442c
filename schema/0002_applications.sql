-- 0002: tables the applications write (embeddings, similarities, retraining checks).

-- PCA components of each target's weight vector and its spectral cluster (`dmdb embed`).
-- embedding is a FLOAT list of the chosen number of components (default 32);
-- cast it, e.g. embedding::FLOAT[32], for array functions.
CREATE TABLE embeddings (
    fit_id     INTEGER NOT NULL,
    target_idx INTEGER NOT NULL,
    embedding  FLOAT[] NOT NULL,
    cluster    INTEGER,
    PRIMARY KEY (fit_id, target_idx)
);

-- Each target's nearest targets by cosine similarity of raw weight vectors
-- (materialised by `dmdb embed`: the full M x M table is too big at scale).
CREATE TABLE target_similarity (
    fit_id   INTEGER NOT NULL,
    target_a INTEGER NOT NULL,
    target_b INTEGER NOT NULL,
    rank     INTEGER NOT NULL,   -- 1 = target_a's most similar other target
    cosine   FLOAT NOT NULL
);

-- What each retraining run of `dmdb verify` was for. The run itself (mask,
-- margins) is in runs / masks / margins with split 'verify'.
--   kind 'counterfactual': condition 'top' (the target's k most positive weights
--       removed), 'random' (k random examples removed) or 'none' (baseline, k = 0);
--   kind 'brittleness': condition 'support' (the estimated support set removed,
--       k = its size) or 'random' (k random examples removed);
--   kind 'ceiling': several seeds on one fresh mask (fit_id NULL, target NULL).
CREATE TABLE verify_runs (
    run_id     BIGINT PRIMARY KEY,
    fit_id     INTEGER,
    kind       VARCHAR NOT NULL CHECK (kind IN ('counterfactual', 'brittleness', 'ceiling')),
    target_idx INTEGER,
    condition  VARCHAR,
    k          INTEGER,
    removed    INTEGER[]          -- the train_idx excluded from the run's subset
);

-- The noise ceiling per target (`dmdb verify --ceiling`), measured on ceiling runs.
CREATE TABLE noise_ceiling (
    fit_id         INTEGER NOT NULL,
    target_idx     INTEGER NOT NULL,
    n_masks        INTEGER NOT NULL,
    n_seeds        INTEGER NOT NULL,
    seed_spearman  DOUBLE,   -- Spearman between two seeds' margins across masks
    mask_r2        DOUBLE,   -- fraction of margin variance the mask explains
    attainable_lds DOUBLE,   -- best single-seed LDS a datamodel could reach: sqrt(mask_r2)
    lds_1          DOUBLE,   -- the fit's LDS against single-seed margins on the ceiling masks
    lds_2          DOUBLE,   -- ... against margins averaged over 2 seeds
    lds_5          DOUBLE,   -- ... over 5 seeds
    PRIMARY KEY (fit_id, target_idx)
);
