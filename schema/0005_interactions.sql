-- 0005: second-order datamodels (`dmdb fit --pairs K`). A fit with pairs predicts
--   margin(S) = bias + sum_{i in S} weight_i + sum_{a < b, both in S} interactions.weight_ab
-- in mask space; `weights` holds its linear part. Only non-zeros are stored, with
-- train_a < train_b. fits.parameters->>'pairs' is K (NULL or absent for a linear fit),
-- and a fit without rows here is linear, so every view treats both alike.
CREATE TABLE interactions (
    fit_id INTEGER NOT NULL,
    target_idx INTEGER NOT NULL,
    train_a INTEGER NOT NULL,
    train_b INTEGER NOT NULL,
    weight FLOAT NOT NULL,
    PRIMARY KEY (fit_id, target_idx, train_a, train_b),
    CHECK (train_a < train_b)
);
