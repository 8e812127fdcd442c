"""Trainers: the batched MLP against its one-at-a-time oracle, plug-ins, the registry.

Everything trains for real, at tiny sizes (few models, few epochs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmdb.datasets import load_dataset
from dmdb.errors import DeviceError, TrainerError, UsageError
from dmdb.trainers import PartialTrainError, Trainer, TrainResult, batched, make_trainer
from dmdb.trainers.base import check_result, margins_from_logits
from dmdb.trainers.mlp import (
    BatchedMLPTrainer,
    MLPOptions,
    ReferenceMLPTrainer,
    train_one_reference,
)
from dmdb.trainers.plugin import PluginTrainer

REPO = Path(__file__).resolve().parents[1]
N, M = 1297, 500
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread: on a shared 2-core machine two threads can stall badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root, as a user runs `dmdb train` from their project."""
    monkeypatch.chdir(REPO)


def bernoulli(n_runs: int, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n_runs, N)) < alpha


# --------------------------------------------------------------------------- base


def test_margins_from_logits_batched_and_ties():
    logits = torch.tensor([[[2.0, 1.0, 0.5], [0.0, 3.0, 3.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 5.0]]])
    labels = torch.tensor([0, 1])
    margins = margins_from_logits(logits, labels)
    assert margins.shape == (2, 2)
    assert torch.equal(margins, torch.tensor([[1.0, 0.0], [0.0, -5.0]]))


def test_check_result_converts_and_rejects():
    ok = check_result(TrainResult(np.ones((2, 3)), np.array([0.5, np.nan])), 2, 3)
    assert ok.margins.dtype == np.float32 and ok.train_acc.dtype == np.float64
    with pytest.raises(TrainerError, match=r"shape \(2, 4\), expected \(2, 3\)"):
        check_result(TrainResult(np.ones((2, 4)), np.zeros(2)), 2, 3)
    with pytest.raises(TrainerError, match="dtype int64"):
        check_result(TrainResult(np.ones((2, 3), dtype=np.int64), np.zeros(2)), 2, 3)
    bad = np.ones((2, 3))
    bad[1, 2] = 1e300  # finite as float64, inf as float32
    with pytest.raises(TrainerError, match="run 17: .*NaN or infinite"):
        check_result(TrainResult(bad, np.zeros(2)), 2, 3, run_labels=[16, 17])


# --------------------------------------------------------------------------- batched MLP


def test_batched_mlp_learns(digits):
    trainer = BatchedMLPTrainer(digits, CPU, MLPOptions(epochs=3, batch_models=8))
    assert isinstance(trainer, Trainer)
    result = trainer.train(bernoulli(8), np.arange(8))
    assert result.margins.shape == (8, M) and result.margins.dtype == np.float32
    assert result.train_acc.shape == (8,) and result.train_acc.dtype == np.float64
    per_model_acc = (result.margins > 0).mean(axis=1)
    assert per_model_acc.min() > 0.85, per_model_acc
    assert result.train_acc.min() > 0.85


def test_batched_mlp_matches_one_at_a_time_reference(digits):
    # Same initialisation and minibatch order, so only float rounding separates them.
    opts = MLPOptions(epochs=2, batch_models=4)
    masks, seeds = bernoulli(3, seed=1), np.array([5, 6, 7])
    batched_result = BatchedMLPTrainer(digits, CPU, opts).train(masks, seeds)
    for b in range(3):
        margins, train_acc = train_one_reference(digits, masks[b], int(seeds[b]), opts)
        np.testing.assert_allclose(batched_result.margins[b], margins, atol=2e-3)
        assert (batched_result.margins[b] > 0).mean() == pytest.approx(
            (margins > 0).mean(), abs=0.01
        )
        assert batched_result.train_acc[b] == pytest.approx(train_acc, abs=0.01)


def test_reference_trainer_accuracy_ballpark(digits):
    opts = MLPOptions(epochs=3)
    masks, seeds = bernoulli(2, seed=2), np.array([0, 1])
    loop = ReferenceMLPTrainer(digits, CPU, opts).train(masks, seeds)
    fast = BatchedMLPTrainer(digits, CPU, opts).train(masks, seeds)
    assert (loop.margins > 0).mean() > 0.85
    assert abs((loop.margins > 0).mean() - (fast.margins > 0).mean()) < 0.02


def test_batched_mlp_is_independent_of_chunk_composition(digits):
    opts = MLPOptions(epochs=2, batch_models=5)
    masks = bernoulli(5, seed=3)
    masks[4] = np.random.default_rng(9).random(N) < 0.1  # a much shorter model in the chunk
    seeds = np.array([10, 11, 12, 13, 14])
    together = BatchedMLPTrainer(digits, CPU, opts).train(masks, seeds)
    # Other neighbours, another order, another chunk size: bit-identical per (mask, seed).
    order = [3, 1, 4]
    regrouped = BatchedMLPTrainer(digits, CPU, MLPOptions(epochs=2, batch_models=2)).train(
        masks[order], seeds[order]
    )
    alone = BatchedMLPTrainer(digits, CPU, MLPOptions(epochs=2, batch_models=1)).train(
        masks[1:2], seeds[1:2]
    )
    assert np.array_equal(regrouped.margins, together.margins[order])
    assert np.array_equal(regrouped.train_acc, together.train_acc[order])
    assert np.array_equal(alone.margins[0], together.margins[1])
    # Nor on the thread count (the fixture runs everything else on one thread).
    two_threads = BatchedMLPTrainer(digits, CPU, MLPOptions(epochs=2, n_threads=2)).train(
        masks, seeds
    )
    assert np.array_equal(two_threads.margins, together.margins)
    # And repeatable: a repeat of a run gives the same margins.
    again = BatchedMLPTrainer(digits, CPU, opts).train(masks, seeds)
    assert np.array_equal(again.margins, together.margins)


def test_batched_mlp_seed_matters(digits):
    trainer = BatchedMLPTrainer(digits, CPU, MLPOptions(epochs=1))
    mask = bernoulli(1)[0]
    result = trainer.train(np.stack([mask, mask]), np.array([0, 1]))
    assert not np.array_equal(result.margins[0], result.margins[1])


def test_batched_mlp_ragged_masks_match_reference(digits):
    opts = MLPOptions(epochs=2, batch_size=32)
    masks = np.zeros((4, N), dtype=bool)
    masks[0, 5] = True  # one example: one minibatch of one row per epoch
    masks[1, :33] = True  # one full minibatch and one of a single row
    masks[2] = True  # the whole training set
    # masks[3] stays empty: the model keeps its initialisation.
    seeds = np.arange(4)
    result = BatchedMLPTrainer(digits, CPU, opts).train(masks, seeds)
    assert np.isfinite(result.margins).all()
    for b in range(4):
        margins, train_acc = train_one_reference(digits, masks[b], b, opts)
        np.testing.assert_allclose(result.margins[b], margins, atol=2e-3)
        if b < 3:
            assert result.train_acc[b] == pytest.approx(train_acc, abs=0.01)
    assert np.isnan(result.train_acc[3])
    assert result.train_acc[0] == 1.0  # it learnt its single example


def test_mlp_options_are_checked():
    assert MLPOptions.from_dict({"epochs": "5", "lr": "0.05"}) == MLPOptions(epochs=5, lr=0.05)
    with pytest.raises(UsageError, match="unknown option.*epoch\\b"):
        MLPOptions.from_dict({"epoch": 3})
    with pytest.raises(UsageError, match="not a number"):
        MLPOptions.from_dict({"lr": "fast"})
    with pytest.raises(UsageError, match="lr must be"):
        MLPOptions.from_dict({"lr": -1})


def test_masks_are_checked(digits):
    trainer = BatchedMLPTrainer(digits, CPU, MLPOptions(epochs=1))
    with pytest.raises(TrainerError, match="masks must have shape"):
        trainer.train(np.ones((2, 10), dtype=bool), np.arange(2))
    with pytest.raises(TrainerError, match="only 0 and 1"):
        trainer.train(np.full((1, N), 2), np.arange(1))


# --------------------------------------------------------------------------- plug-ins


def test_plugin_per_run(in_repo):
    trainer = PluginTrainer("tests.plugin_examples:centroid", N, M)
    assert trainer.preferred_batch == 1 and not trainer.batched
    result = trainer.train(bernoulli(3), np.arange(3))
    assert result.margins.shape == (3, M) and result.margins.dtype == np.float32  # from float64
    assert np.isnan(result.train_acc).all()
    assert (result.margins > 0).mean() > 0.8  # nearest class mean does learn digits


def test_plugin_batched_form_matches_per_run(in_repo):
    masks, seeds = bernoulli(3), np.arange(3)
    per_run = PluginTrainer("tests.plugin_examples:centroid", N, M).train(masks, seeds)
    trainer = PluginTrainer("tests.plugin_examples:centroid_batched", N, M)
    assert trainer.batched and trainer.preferred_batch == 3
    np.testing.assert_array_equal(trainer.train(masks, seeds).margins, per_run.margins)
    as_list = PluginTrainer("tests.plugin_examples:centroid_as_list", N, M).train(masks, seeds)
    np.testing.assert_array_equal(as_list.margins, per_run.margins)


def test_batched_decorator_forms():
    @batched
    def f(masks, seeds):
        return None

    @batched(size=7)
    def g(masks, seeds):
        return None

    assert f.dmdb_batched and f.dmdb_batch_size == 64
    assert g.dmdb_batched and g.dmdb_batch_size == 7


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("bad_nan_for_seed_2", r"returned 1 NaN or infinite margin"),
        ("bad_overflow_for_seed_2", r"NaN or infinite"),
        ("bad_shape_for_seed_2", r"returned shape \(499,\), expected \(500,\)"),
        ("bad_raises_for_seed_2", r"raised RuntimeError: out of memory \(pretend\)"),
    ],
)
def test_plugin_failure_keeps_earlier_runs(in_repo, fn, message):
    masks, seeds = bernoulli(4), np.arange(4)
    good = PluginTrainer("tests.plugin_examples:centroid", N, M).train(masks, seeds)
    trainer = PluginTrainer(f"tests.plugin_examples:{fn}", N, M)
    with pytest.raises(PartialTrainError, match=message) as info:
        trainer.train(masks, seeds)
    err = info.value
    assert isinstance(err, TrainerError)
    assert "\n" not in str(err)
    assert str(err).startswith("run 2 of the batch (seed 2): plug-in ")
    assert err.failed_index == 2 and len(err.result) == 2
    np.testing.assert_array_equal(err.result.margins, good.margins[:2])


def test_plugin_int_dtype_is_rejected(in_repo):
    trainer = PluginTrainer("tests.plugin_examples:bad_int_dtype", N, M)
    with pytest.raises(PartialTrainError, match="run 0 .*dtype int64; margins must be floats"):
        trainer.train(bernoulli(2), np.arange(2))


def test_batched_plugin_failures(in_repo):
    masks, seeds = bernoulli(3), np.arange(3)
    with pytest.raises(PartialTrainError, match="run 1 .*NaN or infinite") as info:
        PluginTrainer("tests.plugin_examples:bad_batched_nan_row_1", N, M).train(masks, seeds)
    assert info.value.failed_index == 1 and len(info.value.result) == 1
    with pytest.raises(PartialTrainError, match=r"shape \(3, 3\), expected \(3, 500\)") as info:
        PluginTrainer("tests.plugin_examples:bad_batched_shape", N, M).train(masks, seeds)
    assert len(info.value.result) == 0


def test_plugin_cannot_corrupt_masks(in_repo):
    masks = bernoulli(2)
    before = masks.copy()
    PluginTrainer("tests.plugin_examples:mutates_mask", N, M).train(masks, np.arange(2))
    assert np.array_equal(masks, before)


def test_plugin_import_failures(in_repo, tmp_path, monkeypatch):
    with pytest.raises(TrainerError, match=r"^cannot import 'no_such_mod_xyz:f': .*No module"):
        PluginTrainer("no_such_mod_xyz:f", N, M)
    with pytest.raises(TrainerError, match=r"'tests.plugin_examples' has no attribute 'nope'"):
        PluginTrainer("tests.plugin_examples:nope", N, M)
    with pytest.raises(TrainerError, match="'NOT_CALLABLE' is not callable"):
        PluginTrainer("tests.plugin_examples:NOT_CALLABLE", N, M)
    with pytest.raises(TrainerError, match="is named 'package.module:function'"):
        PluginTrainer("tests.plugin_examples:", N, M)
    # A module that fails on import: one line, with the exception's type and text.
    (tmp_path / "broken_plugin_mod.py").write_text("raise ValueError('bad\\nconfig')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(REPO))])
    with pytest.raises(TrainerError) as info:
        PluginTrainer("broken_plugin_mod:train", N, M)
    assert str(info.value) == "cannot import 'broken_plugin_mod:train': ValueError: bad config"


def test_plugin_module_found_from_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_plugin_mod.py").write_text(
        "import numpy as np\ndef train(mask, seed):\n    return np.full(4, float(seed))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != ""])
    result = PluginTrainer("cwd_plugin_mod:train", 5, 4).train(np.ones((2, 5), bool), [3, 4])
    assert result.margins.tolist() == [[3.0] * 4, [4.0] * 4]


def test_logreg_example_from_readme(in_repo):
    from examples import logreg_plugin

    trainer = make_trainer(
        "examples.logreg_plugin:train",
        dataset_name=None,
        n_train=logreg_plugin.N_TRAIN,
        n_targets=logreg_plugin.N_TARGETS,
    )
    masks = np.random.default_rng(0).random((3, logreg_plugin.N_TRAIN)) < 0.5
    result = trainer.train(masks, np.arange(3))
    assert result.margins.shape == (3, logreg_plugin.N_TARGETS)
    assert (result.margins > 0).mean() > 0.9


# --------------------------------------------------------------------------- registry


def test_make_trainer_default_is_mlp_for_digits():
    trainer = make_trainer(
        None, dataset_name="digits", n_train=N, n_targets=M, options={"epochs": "1"}
    )
    assert isinstance(trainer, BatchedMLPTrainer) and trainer.name == "mlp"
    assert trainer.options.epochs == 1
    loop = make_trainer(
        "mlp", dataset_name="digits", n_train=N, n_targets=M, options={"impl": "loop"}
    )
    assert isinstance(loop, ReferenceMLPTrainer)


def test_make_trainer_errors(in_repo):
    with pytest.raises(UsageError, match="pass --trainer"):
        make_trainer(None, dataset_name=None, n_train=10, n_targets=3)
    with pytest.raises(TrainerError, match="unknown trainer 'resnet'; known: mlp, cifar10, fmow"):
        make_trainer("resnet", dataset_name="digits", n_train=N, n_targets=M)
    with pytest.raises(TrainerError, match="'mlp' needs a built-in dataset"):
        make_trainer("mlp", dataset_name=None, n_train=N, n_targets=M)
    with pytest.raises(TrainerError, match="n_train=1000"):
        make_trainer("mlp", dataset_name="digits", n_train=1000, n_targets=M)
    with pytest.raises(TrainerError, match="n_targets=400"):
        make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=400)
    # A plug-in's M is only known from its output: a mismatch fails the first run.
    wrong_m = make_trainer(
        "tests.plugin_examples:centroid", dataset_name=None, n_train=N, n_targets=400
    )
    with pytest.raises(PartialTrainError, match=r"expected \(400,\)"):
        wrong_m.train(bernoulli(1), [0])
    with pytest.raises(UsageError, match="takes no options"):
        make_trainer(
            "tests.plugin_examples:centroid",
            dataset_name=None,
            n_train=N,
            n_targets=M,
            options={"epochs": 3},
        )
    with pytest.raises(UsageError, match="unknown option"):
        make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M, options={"epochz": 3})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_device_error():
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M, device="cuda")


def test_builtins_and_plugins_share_one_table(in_repo):
    from dmdb.trainers import BUILTIN_TRAINERS, TRAINERS

    assert set(BUILTIN_TRAINERS) <= set(TRAINERS) and "mlp" in BUILTIN_TRAINERS
    plugin = make_trainer(
        "tests.plugin_examples:centroid", dataset_name=None, n_train=N, n_targets=M
    )
    assert isinstance(plugin, PluginTrainer)
    assert "tests.plugin_examples:centroid" in TRAINERS  # entered under its own name


def test_a_registered_factory_is_built_like_a_builtin(in_repo):
    from dmdb.trainers import TRAINERS, TrainerRequest, register_trainer

    seen: list[TrainerRequest] = []

    def factory(request: TrainerRequest) -> Trainer:
        seen.append(request)
        return PluginTrainer("tests.plugin_examples:centroid", request.n_train,
                             request.n_targets, request.options.batch_models)

    register_trainer("centroid-test", factory)
    try:
        trainer = make_trainer("centroid-test", dataset_name="digits", n_train=N, n_targets=M,
                               options={"k": "v"}, batch_models=5)
    finally:
        del TRAINERS["centroid-test"]
    request = seen[0]
    assert request.name == "centroid-test" and request.device == CPU
    assert dict(request.options.settings) == {"k": "v"} and request.options.batch_models == 5
    assert trainer.preferred_batch == 5


def test_batch_models_reaches_every_factory(in_repo):
    mlp = make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M, batch_models=8)
    assert isinstance(mlp, BatchedMLPTrainer)
    assert mlp.options.batch_models == 8 and mlp.preferred_batch == 8  # the chunk and the call
    explicit = make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M,
                            options={"batch_models": "16"}, batch_models=8)
    assert explicit.options.batch_models == 16  # --set wins, as for every other option
    loop = make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M,
                        options={"impl": "loop"}, batch_models=3)
    assert loop.preferred_batch == 3
    plugin = make_trainer("tests.plugin_examples:centroid_batched", dataset_name=None,
                          n_train=N, n_targets=M, batch_models=7)
    assert plugin.preferred_batch == 7
    default = make_trainer("tests.plugin_examples:centroid_batched", dataset_name=None,
                           n_train=N, n_targets=M)
    assert default.preferred_batch == 3  # its own @batched(size=3)
    for bad in (0, -2):
        with pytest.raises(UsageError, match="--batch-models must be positive"):
            make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M, batch_models=bad)


def test_config_is_an_explicit_option_of_every_builtin(in_repo, tmp_path):
    config = tmp_path / "mlp.toml"
    config.write_text("epochs = 3\nhidden = 32\n")
    trainer = make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M,
                           options={"hidden": "16"}, config=str(config))
    assert (trainer.options.epochs, trainer.options.hidden) == (3, 16)  # --set wins
    # The README's `--set config=PATH` names the same file.
    same = make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M,
                        options={"config": str(config)})
    assert same.options.epochs == 3
    with pytest.raises(UsageError, match="two config files"):
        make_trainer("mlp", dataset_name="digits", n_train=N, n_targets=M,
                     options={"config": "other.toml"}, config=str(config))
    with pytest.raises(UsageError, match="takes no options; got config"):
        make_trainer("tests.plugin_examples:centroid", dataset_name=None, n_train=N,
                     n_targets=M, config=str(config))


def test_mlp_and_recipes_share_one_option_converter():
    from dmdb.trainers.recipe_options import recipe_hyperparameters

    for build in (MLPOptions.from_dict, lambda o: recipe_hyperparameters("cifar10", o)):
        with pytest.raises(UsageError, match=r"^option epochs='three': expected int; 'three' "
                                             r"is not a number$"):
            build({"epochs": "three"})
        with pytest.raises(UsageError, match=r"^option epochs=2.5: expected int$"):
            build({"epochs": 2.5})
        with pytest.raises(UsageError, match=r"^unknown option 'epoch' for trainer "):
            build({"epoch": "3"})
    assert MLPOptions.from_dict({"n_threads": None}).n_threads is None
    assert MLPOptions.from_dict({"n_threads": "2"}).n_threads == 2
