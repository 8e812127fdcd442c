"""The paper's GPU recipes (cifar10, fmow), run on the CPU on tiny synthetic betons."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

from dmdb.errors import InputError, TrainerError, UsageError  # noqa: E402
from dmdb.trainers.base import Trainer  # noqa: E402
from dmdb.trainers.betons import read_beton_info, synthetic_images, write_beton  # noqa: E402
from dmdb.trainers.recipes import (  # noqa: E402
    Cifar10Hyperparameters,
    FmowHyperparameters,
    load_config,
    make_recipe_trainer,
    recipe_hyperparameters,
)

N_TRAIN, N_TARGETS = 256, 64
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def betons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("betons")
    train = write_beton(synthetic_images(N_TRAIN), root / "train.beton", num_workers=1)
    targets = write_beton(synthetic_images(N_TARGETS, seed=1), root / "targets.beton",
                          num_workers=1)
    return {"train_beton": str(train), "targets_beton": str(targets), "root": str(root)}


@pytest.fixture(scope="module")
def one_thread():
    # Under contention on 2 shared cores one torch thread is faster and steadier.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar(betons, one_thread):
    """A cifar10 trainer configured by a TOML file plus CLI-style string options."""
    config = f"{betons['root']}/tiny.toml"
    with open(config, "w", encoding="utf-8") as f:
        f.write('epochs = 6\npeak_epoch = 2\nwidth = 16\nbatch_size = 32\nlr = 0.5\n'
                'num_workers = 1\neval_batch_size = 64\n')
    options = {"train_beton": betons["train_beton"], "targets_beton": betons["targets_beton"],
               "config": config, "width": "8", "lr": "0.1"}
    return make_recipe_trainer("cifar10", N_TRAIN, N_TARGETS, CPU, options)


def _masks(n_runs: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n_runs, N_TRAIN)) < 0.5


def test_config_file_and_options_set_hyperparameters(cifar):
    hp = cifar.hparams
    assert isinstance(hp, Cifar10Hyperparameters)
    # From the config file ...
    assert (hp.epochs, hp.peak_epoch, hp.batch_size, hp.num_workers) == (6, 2.0, 32, 1)
    # ... overridden by explicit (string) options ...
    assert (hp.width, hp.lr) == (8, 0.1)
    # ... and the paper's values elsewhere.
    assert (hp.momentum, hp.weight_decay, hp.label_smoothing) == (0.9, 5e-4, 0.1)
    assert (hp.translate_pad, hp.cutout, hp.test_flip) == (2, 8, True)
    assert cifar.name == "cifar10" and isinstance(cifar, Trainer)
    assert (cifar.n_train, cifar.n_targets) == (N_TRAIN, N_TARGETS)


def test_cifar10_trains_several_models_with_one_loader(cifar):
    threads = torch.get_num_threads()
    train_loader, targets_loader = cifar.train_loader, cifar.targets_loader
    result = cifar.train(_masks(3), np.array([0, 1, 2], dtype=np.int64))
    assert result.margins.shape == (3, N_TARGETS)
    assert result.margins.dtype == np.float32
    assert np.isfinite(result.margins).all()
    assert result.train_acc.shape == (3,) and result.train_acc.dtype == np.float64
    assert ((result.train_acc >= 0) & (result.train_acc <= 1)).all()
    cifar.train(_masks(1, seed=5), np.array([7]))
    # The same two Loaders served every model; FFCV changed no thread count.
    assert cifar.train_loader is train_loader and cifar.targets_loader is targets_loader
    assert cifar.loaders_built == 2
    assert torch.get_num_threads() == threads


def test_same_mask_and_seed_give_the_same_model_on_cpu(cifar):
    mask = _masks(1, seed=3)[0]
    first = cifar.train(np.stack([mask, mask]), np.array([11, 12]))
    again = cifar.train(mask[None], np.array([11]))
    np.testing.assert_array_equal(first.margins[0], again.margins[0])
    assert not np.array_equal(first.margins[0], first.margins[1])


def test_cifar10_recipe_learns_the_synthetic_classes(cifar):
    result = cifar.train(np.ones((1, N_TRAIN), dtype=bool), np.array([0]))
    target_accuracy = (result.margins > 0).mean()
    assert target_accuracy >= 0.5  # chance is 0.1; about 0.8 is typical


def test_empty_mask_is_refused(cifar):
    with pytest.raises(TrainerError, match="selects no training example"):
        cifar.train(np.zeros((1, N_TRAIN), dtype=bool), np.array([0]))


def test_fmow_recipe_smoke(betons, one_thread):
    options = {"train_beton": betons["train_beton"], "targets_beton": betons["targets_beton"],
               "resolution": "32", "width": "4", "num_classes": "10", "epochs": "1",
               "peak_epoch": "0.5", "batch_size": "64", "eval_batch_size": "64",
               "num_workers": "1", "crop_scale_min": "0.5"}
    trainer = make_recipe_trainer("fmow", N_TRAIN, N_TARGETS, CPU, options)
    hp = trainer.hparams
    assert isinstance(hp, FmowHyperparameters)
    assert (hp.momentum, hp.weight_decay, hp.resolution) == (0.9, 1e-3, 32)
    result = trainer.train(_masks(2), np.array([0, 1]))
    assert result.margins.shape == (2, N_TARGETS) and result.margins.dtype == np.float32
    assert np.isfinite(result.margins).all()


def test_paper_defaults():
    cifar, fmow = recipe_hyperparameters("cifar10"), recipe_hyperparameters("fmow")
    assert (cifar.lr, cifar.batch_size, cifar.epochs, cifar.peak_epoch) == (0.5, 512, 24, 5)
    assert (cifar.momentum, cifar.weight_decay, cifar.label_smoothing) == (0.9, 5e-4, 0.1)
    assert (fmow.lr, fmow.batch_size, fmow.epochs, fmow.peak_epoch) == (0.4, 512, 15, 6)
    assert (fmow.momentum, fmow.weight_decay, fmow.num_classes) == (0.9, 1e-3, 62)


def test_option_values_are_converted_from_strings_and_json():
    hp = recipe_hyperparameters("cifar10", {"epochs": "30", "lr": "0.25", "test_flip": "false",
                                            "order": "quasi_random"})
    assert (hp.epochs, hp.lr, hp.test_flip, hp.order) == (30, 0.25, False, "quasi_random")
    assert recipe_hyperparameters("fmow", {"lr": 1, "flip": False}).lr == 1.0


def test_load_config_reads_json_and_toml(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"epochs": 3, "lr": 0.2}))
    (tmp_path / "a.toml").write_text("epochs = 3\nlr = 0.2\n")
    assert load_config(tmp_path / "a.json") == load_config(tmp_path / "a.toml")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="object/table"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epoch": "3"}, r"unknown option 'epoch'.*valid options: .*epochs"),
        ({"epochs": "three"}, r"epochs='three': expected int"),
        ({"test_flip": "maybe"}, r"expected bool"),
        ({"lr": "-1"}, r"lr must be > 0"),
        ({"epochs": "2"}, r"peak_epoch=5.* set peak_epoch too"),
        ({"order": "sorted"}, r"order must be one of random, quasi_random"),
    ],
)
def test_bad_hyperparameters_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        recipe_hyperparameters("cifar10", options)


def test_bad_trainer_options_are_usage_errors(betons, tmp_path):
    ok = {"train_beton": betons["train_beton"], "targets_beton": betons["targets_beton"]}
    with pytest.raises(UsageError, match="unknown recipe 'imagenet'"):
        make_recipe_trainer("imagenet", N_TRAIN, N_TARGETS, CPU, ok)
    with pytest.raises(UsageError, match="needs option train_beton=PATH"):
        make_recipe_trainer("cifar10", N_TRAIN, N_TARGETS, CPU,
                            {"targets_beton": betons["targets_beton"]})
    with pytest.raises(UsageError, match="does not exist"):
        make_recipe_trainer("cifar10", N_TRAIN, N_TARGETS, CPU,
                            {**ok, "targets_beton": str(tmp_path / "nope.beton")})
    with pytest.raises(UsageError, match="holds 256 examples, but the experiment has n_train=100"):
        make_recipe_trainer("cifar10", 100, N_TARGETS, CPU, ok)
    with pytest.raises(UsageError, match="holds 64 examples, but the experiment has n_targets=65"):
        make_recipe_trainer("cifar10", N_TRAIN, 65, CPU, ok)
    with pytest.raises(UsageError, match="unknown option 'colour'"):
        make_recipe_trainer("cifar10", N_TRAIN, N_TARGETS, CPU, {**ok, "colour": "red"})
    (tmp_path / "junk.beton").write_bytes(b"not a beton at all" * 10)
    with pytest.raises(UsageError, match="not a readable FFCV beton"):
        make_recipe_trainer("cifar10", N_TRAIN, N_TARGETS, CPU,
                            {**ok, "train_beton": str(tmp_path / "junk.beton")})
    with pytest.raises(InputError, match="num_classes=5"):
        make_recipe_trainer("cifar10", N_TRAIN, N_TARGETS, CPU, {**ok, "num_classes": "5"})


class _MixedItems:
    """PIL, greyscale and WILDS-style (image, tensor label, metadata) items."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        from PIL import Image

        image, label = synthetic_images(6, resolution=16)[i]
        if i % 3 == 0:
            return Image.fromarray(image), label
        if i % 3 == 1:
            return image[:, :, 0], np.int64(label)
        return image, torch.tensor([label]), {"region": "x"}


def test_write_beton_accepts_torchvision_style_items(tmp_path):
    path = write_beton(_MixedItems(), tmp_path / "mixed.beton", num_workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.beton"]
    info = read_beton_info(path)
    assert info.n_examples == 6
    np.testing.assert_array_equal(info.labels, np.arange(6) % 10)
    assert (info.image_shapes == 16).all()


class _OneBadItem:
    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int):
        if i == 13:
            return np.zeros((16, 16, 3), dtype=np.float32), 0
        return synthetic_images(20, resolution=16)[i]


def test_write_beton_reports_bad_items_and_leaves_no_file(tmp_path):
    with pytest.raises(InputError, match="item 13: .*must be uint8"):
        write_beton(_OneBadItem(), tmp_path / "bad.beton", num_workers=2)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="empty dataset"):
        write_beton([], tmp_path / "empty.beton")




def test_recipes_come_through_the_trainer_door(betons, tmp_path):
    # Stops before FFCV Loaders are built: a third Loader of a recipe in one process
    # makes numba's finalizers fail at exit.
    from dmdb.trainers import make_trainer

    config = tmp_path / "door.json"
    config.write_text(json.dumps({"train_beton": betons["train_beton"],
                                  "targets_beton": betons["targets_beton"], "num_classes": 10}))
    door = {"dataset_name": None, "n_train": N_TRAIN, "n_targets": N_TARGETS}
    # The betons come from the config file, num_classes from the settings, which win.
    with pytest.raises(InputError, match="train_beton .*num_classes=5"):
        make_trainer("cifar10", **door, options={"num_classes": "5"}, config=str(config))
    with pytest.raises(UsageError, match="--batch-models must be positive"):
        make_trainer("cifar10", **door, config=str(config), batch_models=0)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"config": str(config)}))
    with pytest.raises(UsageError, match="cannot name another config file"):
        make_trainer("fmow", **door, config=str(nested))
