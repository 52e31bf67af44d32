"""Tests for oneshot.data: offline only (sklearn digits and tiny fake files in tmp_path)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from oneshot.data import (
    DATAMODULES,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageDataModule,
    ImageNet16DataModule,
    ImageNet16Dataset,
    ImageNetDataModule,
    SVHNDataModule,
    read_split_file,
)

N_DIGITS, N_DIGITS_TEST = 1797, 360  # 20% of 1797, rounded up by train_test_split


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    return dm


def _indices(subset) -> list[int]:
    return list(subset.indices)


def test_registry_names_and_attributes() -> None:
    assert set(DATAMODULES) == {"digits", "cifar10", "cifar100", "svhn", "imagenet16-120", "imagenet"}
    assert all(issubclass(c, ImageDataModule) for c in DATAMODULES.values())
    expected = {"digits": (10, 1, 8), "cifar10": (10, 3, 32), "cifar100": (100, 3, 32), "svhn": (10, 3, 32),
                "imagenet16-120": (120, 3, 16), "imagenet": (1000, 3, 224)}
    for name, (classes, channels, size) in expected.items():
        cls = DATAMODULES[name]
        assert (cls.num_classes, cls.in_channels, cls.image_size) == (classes, channels, size)


def test_digits_shapes(digits: DigitsDataModule) -> None:
    assert digits.num_classes == 10 and digits.in_channels == 1 and digits.image_size == 8
    assert len(digits.train_set) + len(digits.test_set) == N_DIGITS
    assert len(digits.test_set) == N_DIGITS_TEST
    x, y = digits.train_set[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y < 10
    xb, yb = next(iter(digits.test_dataloader()))
    assert xb.shape == (32, 1, 8, 8) and yb.shape == (32,)
    # every class appears in the stratified test set; eval transform is normalised with train stats
    assert set(int(digits.test_set[i][1]) for i in range(len(digits.test_set))) == set(range(10))
    full = torch.stack([digits.arch_eval_set[i][0] for i in range(len(digits.arch_eval_set))])
    assert abs(full.mean().item()) < 0.2 and 0.8 < full.std().item() < 1.2


def test_setup_is_idempotent(digits: DigitsDataModule) -> None:
    before = digits.train_set
    digits.setup("fit")
    digits.setup("test")
    assert digits.train_set is before


def test_bilevel_split_sizes_disjoint_deterministic(digits: DigitsDataModule) -> None:
    n = len(digits.train_set)
    w, a = _indices(digits.weight_set), _indices(digits.arch_set)
    assert len(w) == int(np.floor(0.5 * n)) and len(w) + len(a) == n
    assert w == list(range(len(w)))  # DARTS: first floor(portion*N) indices train the weights
    assert not set(w) & set(a)
    assert _indices(digits.arch_eval_set) == a
    other = DigitsDataModule(train_portion=0.5)
    other.setup()
    assert _indices(other.weight_set) == w and _indices(other.arch_set) == a
    assert torch.equal(other.train_set.base.images, digits.train_set.base.images)
    three_quarters = DigitsDataModule(train_portion=0.75)
    three_quarters.setup()
    assert len(three_quarters.weight_set) == int(np.floor(0.75 * n))


def test_seed_changes_digits_holdout() -> None:
    a, b = DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    a.setup(), b.setup()
    assert not torch.equal(a.test_set.base.images, b.test_set.base.images)


@pytest.mark.parametrize("portion", [0.0, 1.0, 1.5, -0.2])
def test_train_portion_validation(portion: float) -> None:
    with pytest.raises(ValueError, match=rf"train_portion={portion}.*\(0, 1\)"):
        DigitsDataModule(train_portion=portion)


def test_bilevel_halves_use_train_transform_and_eval_for_monitoring(digits: DigitsDataModule) -> None:
    names = lambda view: [type(t).__name__ for t in view.transform.transforms]  # noqa: E731
    assert "RandomCrop" in names(digits.arch_set.dataset)
    assert digits.arch_set.dataset.transform is digits.weight_set.dataset.transform
    assert type(digits.arch_eval_set.dataset.transform).__name__ == "Normalize"
    i = 0
    assert torch.equal(digits.arch_eval_set[i][0], digits.arch_eval_set[i][0])


def test_combined_loader_yields_train_and_val(digits: DigitsDataModule) -> None:
    from lightning.pytorch.utilities import CombinedLoader

    loader = digits.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    batch, _, _ = next(iter(loader))
    assert set(batch) == {"train", "val"}
    for key in ("train", "val"):
        x, y = batch[key]
        assert x.shape == (32, 1, 8, 8) and y.shape == (32,)
    loaders = loader.flattened
    assert all(isinstance(dl, DataLoader) and dl.drop_last is False for dl in loaders)
    assert [len(dl.dataset) for dl in loaders] == [len(digits.weight_set), len(digits.arch_set)]
    val = digits.val_dataloader()
    assert len(val.dataset) == len(digits.arch_set)


def test_not_bilevel_uses_full_train_set_and_test_as_val() -> None:
    dm = DigitsDataModule(bilevel=False, batch_size=16)
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader) and len(loader.dataset) == N_DIGITS - N_DIGITS_TEST
    assert len(dm.val_dataloader().dataset) == N_DIGITS_TEST


def test_missing_cifar_root_raises(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    dm = CIFAR10DataModule(root=str(root))
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str((root / "cifar-10-batches-py").resolve()) in msg
    assert "--data.download" in msg and "--data.root" in msg and "CIFAR-10" in msg
    with pytest.raises(FileNotFoundError):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        CIFAR100DataModule(root=str(root)).prepare_data()
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        SVHNDataModule(root=str(root)).prepare_data()


def test_missing_imagenet_explains_where_to_get_it(tmp_path: Path) -> None:
    for cls, needle in [(ImageNet16DataModule, "train_data_batch_1"), (ImageNetDataModule, "train")]:
        with pytest.raises(FileNotFoundError) as err:
            cls(root=str(tmp_path)).setup()
        msg = str(err.value)
        assert needle in msg and "image-net.org" in msg and "--data.root" in msg
        assert "cannot be downloaded" in msg


def test_cifar_normalization_option() -> None:
    darts = CIFAR10DataModule()
    nb201 = CIFAR10DataModule(normalization="nb201")
    assert darts.eval_transform().transforms[-1].mean == (0.49139968, 0.48215827, 0.44653124)
    nb201_mean = nb201.eval_transform().transforms[-1].mean
    assert nb201_mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    with pytest.raises(ValueError, match="normalization"):
        CIFAR10DataModule(normalization="imagenet")
    c100_std = CIFAR100DataModule().eval_transform().transforms[-1].std
    assert c100_std == pytest.approx((68.2 / 255, 65.4 / 255, 70.4 / 255))


def _write_imagenet16(folder: Path, per_file: int = 6) -> None:
    """Fake NB201 ImageNet16 pickles: labels cycle over 1, 60, 120, 121, 500, 1000 (1-based)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = [1, 60, 120, 121, 500, 1000]
    rng = np.random.default_rng(0)
    for name in ImageNet16Dataset.train_files + ImageNet16Dataset.test_files:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        data[:, :256] = 7  # red channel of every image set to 7 to check the CHW -> HWC layout
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [labels[i % len(labels)] for i in range(per_file)]}, f)


def test_imagenet16_reader_filters_labels_and_shapes(tmp_path: Path) -> None:
    _write_imagenet16(tmp_path)
    train = ImageNet16Dataset(tmp_path, train=True, num_classes=120)
    test = ImageNet16Dataset(tmp_path, train=False, num_classes=120)
    assert len(train) == 10 * 3 and len(test) == 3  # labels 1, 60, 120 kept; 121, 500, 1000 dropped
    assert sorted(set(train.targets)) == [0, 59, 119]
    image, label = train[0]
    assert image.size == (16, 16) and image.mode == "RGB" and label == 0
    assert np.asarray(image)[..., 0].max() == 7 == np.asarray(image)[..., 0].min()


def test_imagenet16_datamodule(tmp_path: Path) -> None:
    _write_imagenet16(tmp_path / "ImageNet16")
    dm = ImageNet16DataModule(root=str(tmp_path), batch_size=4)
    dm.setup()
    assert len(dm.weight_set) == 15 and len(dm.arch_set) == 15
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert batch["train"][0].shape == (4, 3, 16, 16) and batch["val"][1].max() < 120
    assert next(iter(dm.test_dataloader()))[0].shape == (3, 3, 16, 16)


def _nb201_split(path: Path, entries: dict[str, list[int]]) -> str:
    """Writes a split file in the NB201 format: {"name": ["int", ["0", "5", ...]]}."""
    path.write_text(json.dumps({k: ["int", [str(i) for i in v]] for k, v in entries.items()}, indent=2))
    return str(path)


def test_read_split_file_nb201_format(tmp_path: Path) -> None:
    path = _nb201_split(tmp_path / "cifar-split.txt", {"train": [0, 5, 7], "valid": [1, 2]})
    assert read_split_file(path) == {"train": [0, 5, 7], "valid": [1, 2]}
    (tmp_path / "plain.json").write_text(json.dumps({"xvalid": [3, 1], "xtest": [0, 2]}))
    assert read_split_file(tmp_path / "plain.json") == {"xvalid": [3, 1], "xtest": [0, 2]}
    (tmp_path / "bad.txt").write_text(json.dumps({"train": ["str", ["a"]]}))
    with pytest.raises(ValueError, match="'int'"):
        read_split_file(tmp_path / "bad.txt")


def test_split_file_train_valid_overrides_portion(tmp_path: Path) -> None:
    train, valid = [0, 2, 4, 6, 8, 10], [1, 3, 5, 7]
    split = _nb201_split(tmp_path / "s.txt", {"train": train, "valid": valid})
    dm = DigitsDataModule(train_portion=0.9, split_file=split)
    dm.setup()
    assert _indices(dm.weight_set) == train and _indices(dm.arch_set) == valid
    assert _indices(dm.arch_eval_set) == valid and len(dm.test_set) == N_DIGITS_TEST


def test_split_file_xvalid_uses_test_half(tmp_path: Path) -> None:
    xvalid, xtest = [1, 3, 4], [0, 2, 5, 6]
    dm = DigitsDataModule(split_file=_nb201_split(tmp_path / "t.txt", {"xvalid": xvalid, "xtest": xtest}))
    dm.setup()
    assert len(dm.weight_set) == N_DIGITS - N_DIGITS_TEST  # whole train set trains the weights
    assert _indices(dm.arch_set) == xvalid and len(dm.test_set) == len(xtest)
    raw_test = dm.arch_set.dataset.base
    assert torch.equal(dm.arch_eval_set[0][0], dm.arch_eval_set.dataset.transform(raw_test.images[1]))
    assert torch.equal(dm.test_set[0][0], dm.arch_eval_set.dataset.transform(raw_test.images[0]))


def test_split_file_errors(tmp_path: Path) -> None:
    bad_index = DigitsDataModule(split_file=_nb201_split(tmp_path / "a.txt", {"train": [0], "valid": [99999]}))
    with pytest.raises(ValueError, match="99999"):
        bad_index.setup()
    bad_keys = DigitsDataModule(split_file=_nb201_split(tmp_path / "b.txt", {"foo": [0]}))
    with pytest.raises(ValueError, match="expected 'train' and 'valid'"):
        bad_keys.setup()


class _TinyModel(lightning.LightningModule):
    """Consumes the {"train", "val"} batches the way a bilevel search module does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.seen: set[str] = set()

    def training_step(self, batch, batch_idx):
        self.seen |= set(batch)
        x, y = batch["train"]
        xa, ya = batch["val"]
        return torch.nn.functional.cross_entropy(self.net(torch.cat([x, xa])), torch.cat([y, ya]))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_with_bilevel_loaders() -> None:
    model = _TinyModel()
    trainer = lightning.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert model.seen == {"train", "val"}
