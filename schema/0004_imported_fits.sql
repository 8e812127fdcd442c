-- 0004: fits that dmdb did not compute (`dmdb import-fit`). A score matrix from another
-- attribution method (TRAK, influence functions) has no L1 strength, so datamodels.penalty
-- is NULL where it is unknown. Imported fits are otherwise ordinary rows: solver
-- 'imported', and fits.parameters records the method name, the source file and its
-- sha256, how standardised weights were mapped to mask space, and the evaluation runs.
ALTER TABLE datamodels ALTER COLUMN penalty DROP NOT NULL;
