"""Data modules for one-shot NAS: a train set, a test set and the bilevel search split.

Bilevel search (DARTS, quark0/darts ``cnn/train_search.py``) trains the network weights on one half of
the training data and the architecture parameters on the other half, and both halves use the
*training* augmentation. :class:`ImageDataModule` implements that split once; the subclasses only say
where the images come from and how they are augmented.

Sources of every constant are cited next to it. Papers' repositories read:
quark0/darts (``cnn/train_search.py``, ``cnn/utils.py``, ``cnn/train_imagenet.py``) and
D-X-Y/AutoDL-Projects (``xautodl/datasets/get_dataset_with_transform.py``,
``xautodl/datasets/DownsampledImageNet.py``, ``configs/nas-benchmark/*split*.txt``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import lightning
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T
import yaml

Transform = Callable[[Any], Any] | None


# --------------------------------------------------------------------------------------------
# Small datasets and helpers
# --------------------------------------------------------------------------------------------
class TransformedView(Dataset):
    """Applies a transform to an untransformed dataset, so the raw data are loaded only once
    while the train-augmented and eval views share them."""

    def __init__(self, base: Dataset, transform: Transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | SampleKey) -> tuple[Any, int]:
        index, seed = (key.index, key.seed) if isinstance(key, SampleKey) else (key, None)
        image, label = self.base[index]
        if self.transform is None:
            return image, int(label)
        if seed is None:
            return self.transform(image), int(label)
        generator = torch.default_generator  # the CPU stream the transforms draw from
        state = generator.get_state()  # (torch.random.fork_rng + manual_seed cost 25x more per sample)
        generator.manual_seed(seed)
        try:  # this sample's augmentation, whatever ran before; the stream is left as it was
            return self.transform(image), int(label)
        finally:
            generator.set_state(state)


class CorruptDataError(ValueError):
    """The dataset's files are there but cannot be read."""


class SampleKey(NamedTuple):
    """A dataset index with the seed its random augmentation is drawn from (see
    :class:`ResumableSampler`): the same image of the same epoch is augmented alike in a resumed
    run, in any worker."""

    index: int
    seed: int


class KeyedSubset(Subset):
    """``Subset`` that passes a :class:`SampleKey` on, with the index mapped."""

    def __getitem__(self, key: int | SampleKey) -> Any:
        if isinstance(key, SampleKey):
            return self.dataset[SampleKey(self.indices[key.index], key.seed)]
        return super().__getitem__(key)

    def __getitems__(self, keys: list[Any]) -> list[Any]:
        return [self[key] for key in keys]


class Cutout:
    """Zeroes one ``length`` x ``length`` square of a (C, H, W) tensor at a uniformly random centre.

    DARTS ``cnn/utils.py`` ``Cutout`` (DeVries & Taylor 2017): the centre is drawn over the whole
    image and the square is clipped at the borders, so near an edge fewer pixels are masked. It
    runs after ``Normalize`` as in DARTS' ``_data_transforms_cifar10``, so masked pixels are exactly
    0 in the normalised tensor (the dataset mean), not black. Draws use torch's RNG, which
    Lightning seeds per data-loader worker.
    """

    def __init__(self, length: int) -> None:
        if length <= 0:
            raise ValueError(f"cutout length={length}; it must be a positive number of pixels")
        self.length = length

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise TypeError("Cutout expects a (C, H, W) tensor: put it after ToTensor/Normalize")
        h, w = image.shape[-2:]
        y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.length // 2
        y1, y2 = max(y - half, 0), min(y + half, h)  # np.clip(y -/+ length // 2, 0, h)
        x1, x2 = max(x - half, 0), min(x + half, w)
        image = image.clone()
        image[:, y1:y2, x1:x2] = 0.0
        return image

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


class TensorImageDataset(Dataset):
    """In-memory (N, C, H, W) float images; the transform works on tensors (fast, no PIL)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Transform = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform is not None else image), int(self.labels[index])


class ImageNet16Dataset(Dataset):
    """Downsampled 16x16 ImageNet as read by NAS-Bench-201 (AutoDL ``DownsampledImageNet.py``).

    Files ``train_data_batch_1..10`` (train) and ``val_data`` (test) are pickled dicts with ``data``
    (N x 3072 uint8, channel-major 3x16x16) and 1-based ``labels``. Only labels ``1..num_classes`` are
    kept and shifted to 0-based, as AutoDL does (ImageNet16-120: 151,700 train / 6,000 test images,
    per the asserts in ``get_dataset_with_transform.py``). Unlike AutoDL, md5 sums are not checked.
    """

    train_files = [f"train_data_batch_{i}" for i in range(1, 11)]
    test_files = ["val_data"]

    def __init__(self, root: str | Path, train: bool, transform: Transform = None,
                 num_classes: int = 120) -> None:
        chunks, labels = [], []
        for name in self.train_files if train else self.test_files:
            with open(Path(root) / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")  # the files were written by Python 2
            chunks.append(np.asarray(entry["data"], dtype=np.uint8))
            labels.append(np.asarray(entry["labels"], dtype=np.int64))
        data, targets = np.concatenate(chunks), np.concatenate(labels)
        keep = (targets >= 1) & (targets <= num_classes)
        self.data = data[keep].reshape(-1, 3, 16, 16).transpose(0, 2, 3, 1)  # HWC for PIL
        self.targets = (targets[keep] - 1).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.data[index])
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def read_split_file(path: str | Path) -> dict[str, list[int]]:
    """Reads an NB201 split file (AutoDL config format, ``configs/nas-benchmark/*split*.txt``).

    The file is JSON, each entry ``"name": ["int", ["0", "5", ...]]`` (a type tag and the indices as
    strings). ``cifar-split.txt`` has ``train``/``valid`` (indices into the CIFAR-10 train set);
    ``cifar100-test-split.txt`` and ``imagenet-16-120-test-split.txt`` have ``xvalid``/``xtest``
    (indices into the test set). A plain list of integers is accepted too.
    """
    with open(path) as f:
        raw = json.load(f)
    out: dict[str, list[int]] = {}
    for key, value in raw.items():
        if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], list):
            if value[0] != "int":
                raise ValueError(f"split file {path}: entry {key!r} has type {value[0]!r}, expected 'int'")
            value = value[1]
        out[key] = [int(v) for v in value]
    return out


# --------------------------------------------------------------------------------------------
# Sampling that survives an interruption
# --------------------------------------------------------------------------------------------
def run_seed() -> int:
    """The run's seed (``seed_everything`` sets ``PL_GLOBAL_SEED`` on every rank), 0 without one."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))
    except ValueError:
        return 0


class ResumableSampler(DistributedSampler):
    """A shuffling sampler whose order is a function of (seed, epoch), sharded over the DDP ranks,
    that can start an epoch after its first ``k`` batches; ``keyed`` yields :class:`SampleKey`
    s, so that each sample's augmentation is seeded by (seed, epoch, index) too.

    ``DataLoader(shuffle=True)`` draws its order from the process random stream, which a resumed
    process cannot reproduce. This order is ``DistributedSampler``'s (``set_epoch`` is called by
    Lightning each epoch; Lightning leaves a ``DistributedSampler`` unwrapped), so a run resumed
    after batch ``k`` of an epoch calls :meth:`skip_batches` and continues with batch ``k + 1``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, keyed: bool = False) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if distributed else 1,
                         rank=dist.get_rank() if distributed else 0, shuffle=True, seed=seed, drop_last=False)
        self.batch_size, self.keyed = batch_size, keyed
        self._skip = 0

    def skip_batches(self, batches: int) -> None:
        """Start the next iteration after ``batches`` batches of this rank's order (once)."""
        self._skip = max(int(batches), 0)

    def __iter__(self) -> Iterator[Any]:
        order = list(super().__iter__())
        start, self._skip = self._skip * self.batch_size, 0
        if not self.keyed:
            return iter(order[start:])
        epoch_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        return iter(SampleKey(i, (epoch_seed + i) % 2**63) for i in order[start:])


# --------------------------------------------------------------------------------------------
# Base data module
# --------------------------------------------------------------------------------------------
class ImageDataModule(lightning.LightningDataModule):
    """Shared base: a train set, a test set, the bilevel search split, loaders.

    Args:
        root: folder holding the dataset files.
        batch_size: batch size of each training loader (DARTS uses 64 for both halves).
        eval_batch_size: batch size of validation/test loaders; defaults to ``batch_size``.
        num_workers: DataLoader workers.
        train_portion: fraction of the train set (first indices) that trains the weights; the rest
            trains the architecture (DARTS ``--train_portion 0.5``). Ignored when ``split_file`` is set.
        split_file: NB201 split file (see :func:`read_split_file`). With ``train``/``valid`` entries
            those train-set indices are the weight/architecture halves (NB201 CIFAR-10). With
            ``xvalid``/``xtest`` the whole train set trains the weights, the test-set images in
            ``xvalid`` train the architecture and the test loader covers only ``xtest`` (NB201
            CIFAR-100 and ImageNet16-120).
        bilevel: True for search (two-half train loader, architecture half as validation);
            False for retraining (whole train set, test set as validation).
        paired_batches: with ``bilevel``, each training batch pairs a weight-half batch with an
            architecture-half batch (``{"train", "val"}``, DARTS); False yields weight-half batches
            only, for algorithms that train no architecture parameters and select on the held-out
            half after training (SPOS: supernet on ImageNet minus 50k images, search on those).
        download: let torchvision download the data where it can.
        seed: seeds the digits test hold-out and any pre-split permutation.
        cutout: side in pixels of the :class:`Cutout` square appended to the train transform,
            after normalisation (DARTS evaluation ``--cutout_length 16``); 0 turns it off.
    """

    num_classes: int
    in_channels: int = 3
    image_size: int
    display_name: str = "dataset"
    shuffle_before_split: bool = False  # set where the files are ordered by class (ImageFolder)
    can_download: bool = False

    def __init__(self, root: str = "data", batch_size: int = 64, eval_batch_size: int | None = None,
                 num_workers: int = 0, train_portion: float = 0.5, split_file: str | None = None,
                 bilevel: bool = True, download: bool = False, seed: int = 0, cutout: int = 0,
                 paired_batches: bool = True) -> None:
        super().__init__()
        if not 0.0 < train_portion < 1.0:
            raise ValueError(f"train_portion={train_portion} is invalid: "
                             "it must lie in the open interval (0, 1)")
        self.root, self.batch_size = str(root), batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.train_portion, self.split_file = num_workers, train_portion, split_file
        self.bilevel, self.download, self.seed = bilevel, download, seed
        self.paired_batches = paired_batches
        if cutout < 0:
            raise ValueError(f"cutout={cutout}; pass 0 (off) or the side of the square in pixels")
        self.cutout = cutout  # DARTS train.py --cutout --cutout_length 16; 0 = off
        self.train_set: Dataset | None = None  # whole train set, train transform

    # -- subclass hooks ---------------------------------------------------------------------
    def build_train_set(self, transform: Transform) -> Dataset:
        """The train set; ``setup`` passes ``transform=None`` and applies transforms through
        :class:`TransformedView`, so the raw images are loaded once for all views."""
        raise NotImplementedError

    def build_test_set(self, transform: Transform) -> Dataset:
        """The test set (same convention as :meth:`build_train_set`)."""
        raise NotImplementedError

    def train_transform(self) -> Transform:
        raise NotImplementedError

    def eval_transform(self) -> Transform:
        raise NotImplementedError

    def train_transform_with_cutout(self) -> Transform:
        """:meth:`train_transform`, followed by :class:`Cutout` when ``cutout`` > 0: every train
        transform ends with ``Normalize``, so the square is cut after normalisation (DARTS)."""
        transform = self.train_transform()
        return T.Compose([transform, Cutout(self.cutout)]) if self.cutout else transform

    def required_paths(self) -> list[Path]:
        """Files or folders that must exist under ``root``; empty for embedded data."""
        return []

    def missing_data_fix(self) -> str:
        """How to make the data available (part of the FileNotFoundError message)."""
        names = ", ".join(p.name for p in self.required_paths())
        return (f"pass --data.root DIR pointing at a folder that contains {names}, "
                f"or --data.download true to let torchvision download it")

    # -- Lightning hooks --------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Downloads (rank 0 only, by Lightning's contract) when allowed, then checks the files."""
        if self.download and self.can_download and self._missing():
            self.read_data()  # torchvision downloads on construction
        self.check_data()

    def check_data(self) -> None:
        """Raises FileNotFoundError before any training when the data are not under ``root``."""
        missing = self._missing()
        if missing:
            looked = ", ".join(str(p.resolve()) for p in missing)
            raise FileNotFoundError(f"{self.display_name} not found: looked for {looked}. "
                                    f"Fix: {self.missing_data_fix()}.")

    def read_data(self) -> tuple[Dataset, Dataset]:
        """The raw train and test sets; files that are there but unreadable (a cut-short download,
        a failed checksum) are one error naming the folder and the fix, not a traceback."""
        try:
            return self.build_train_set(None), self.build_test_set(None)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
            if isinstance(error, FileNotFoundError) and not self.required_paths():
                raise
            folders = ", ".join(str(p.resolve()) for p in self.required_paths()) or str(Path(self.root).resolve())
            fix = (f"delete {folders} and run again with --data.download true" if self.can_download else
                   f"replace {folders} with a complete copy ({self.missing_data_fix()})")
            raise CorruptDataError(f"{self.display_name} under {folders} is corrupt or incomplete "
                                   f"({type(error).__name__}: {str(error).strip()}). Fix: {fix}.") from None

    def _missing(self) -> list[Path]:
        return [p for p in self.required_paths() if not p.exists()]

    def setup(self, stage: str | None = None) -> None:
        """Builds the datasets and the split once (idempotent). Outside a Trainer with
        ``download=True``, call :meth:`prepare_data` first."""
        if self.train_set is not None:
            return
        self.check_data()
        raw_train, raw_test = self.read_data()
        train_tf, eval_tf = self.train_transform_with_cutout(), self.eval_transform()
        self.train_set = TransformedView(raw_train, train_tf)
        self.test_set: Dataset = TransformedView(raw_test, eval_tf)
        weight_idx, arch_source, arch_idx, test_idx = self._split(len(raw_train), len(raw_test))
        raw_arch = raw_test if arch_source == "test" else raw_train
        self.weight_set: Dataset = KeyedSubset(self.train_set, weight_idx)
        self.arch_set: Dataset = KeyedSubset(TransformedView(raw_arch, train_tf), arch_idx)  # DARTS: train aug
        self.arch_eval_set: Dataset = KeyedSubset(TransformedView(raw_arch, eval_tf), arch_idx)  # monitoring
        if test_idx is not None:
            self.test_set = KeyedSubset(self.test_set, test_idx)

    def _split(self, n_train: int, n_test: int) -> tuple[list[int], str, list[int], list[int] | None]:
        """Returns (weight indices, 'train'|'test' source of the arch half, arch indices, test indices)."""
        if self.split_file is None:
            order = list(range(n_train))
            if self.shuffle_before_split:
                order = torch.randperm(n_train, generator=torch.Generator().manual_seed(self.seed)).tolist()
            cut = int(math.floor(self.train_portion * n_train))  # DARTS: split = int(floor(portion * N))
            if cut == 0 or cut == n_train:
                raise ValueError(f"train_portion={self.train_portion} leaves an empty half "
                                 f"of {n_train} images")
            return order[:cut], "train", order[cut:], None
        split = read_split_file(self.split_file)
        if "train" in split and "valid" in split:  # NB201 cifar-split.txt
            self._check_indices(split["train"] + split["valid"], n_train, "train")
            return split["train"], "train", split["valid"], None
        if "xvalid" in split:  # NB201 cifar100-test-split.txt / imagenet-16-120-test-split.txt
            self._check_indices(split["xvalid"] + split.get("xtest", []), n_test, "test")
            return list(range(n_train)), "test", split["xvalid"], split.get("xtest")
        raise ValueError(f"split file {self.split_file} has keys {sorted(split)}; "
                         "expected 'train' and 'valid', or 'xvalid' (and optionally 'xtest')")

    def _check_indices(self, indices: list[int], size: int, which: str) -> None:
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise ValueError(f"split file {self.split_file}: index {bad[0]} is outside the {which} set "
                             f"of {self.display_name} ({size} images)")

    # -- loaders ----------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, stream: int = 0) -> DataLoader:
        """A shuffled loader draws its order from a :class:`ResumableSampler` (seeded by the run's
        seed, the stream and the epoch, sharded under DDP), so a run resumed mid-epoch sees the
        batches the uninterrupted one would; evaluation loaders keep their order."""
        keyed = isinstance(dataset, (KeyedSubset, TransformedView))
        sampler = ResumableSampler(dataset, batch_size, seed=run_seed() + 7919 * stream, keyed=keyed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> CombinedLoader | DataLoader:
        self.setup()
        if not self.bilevel:
            return self._loader(self.train_set, self.batch_size, shuffle=True)
        if not self.paired_batches:
            return self._loader(self.weight_set, self.batch_size, shuffle=True)
        return CombinedLoader({"train": self._loader(self.weight_set, self.batch_size, shuffle=True),
                               "val": self._loader(self.arch_set, self.batch_size, shuffle=True, stream=1)},
                              mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        self.setup()
        if not self.bilevel:
            return self.test_dataloader()
        return self._loader(self.arch_eval_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
class DigitsDataModule(ImageDataModule):
    """scikit-learn's 8x8 digits (1,797 images, 10 classes): the offline default, no files needed.

    A stratified 20% (seeded by ``seed``) is held out as the test set; pixels 0..16 are scaled to
    0..1 and normalised with the train-set pixel mean/std. ``download`` and ``root`` are unused.
    """

    num_classes, in_channels, image_size, display_name = 10, 1, 8, "digits"

    def _arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if not hasattr(self, "_cache"):
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            x, y = load_digits(return_X_y=True)
            x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # pixel values are 0..16
            xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=self.seed)
            self._cache = tuple(torch.from_numpy(a) for a in (xtr, ytr, xte, yte))
        return self._cache  # type: ignore[return-value]

    def _normalize(self) -> T.Normalize:
        xtr = self._arrays()[0]
        return T.Normalize((float(xtr.mean()),), (float(xtr.std()),))

    def build_train_set(self, transform: Transform) -> Dataset:
        xtr, ytr, _, _ = self._arrays()
        return TensorImageDataset(xtr, ytr, transform)

    def build_test_set(self, transform: Transform) -> Dataset:
        _, _, xte, yte = self._arrays()
        return TensorImageDataset(xte, yte, transform)

    def train_transform(self) -> Transform:
        return T.Compose([T.RandomCrop(8, padding=1), self._normalize()])  # CIFAR's pad-4-of-32, scaled down

    def eval_transform(self) -> Transform:
        return self._normalize()


# DARTS cnn/utils.py _data_transforms_cifar10: CIFAR_MEAN / CIFAR_STD
DARTS_CIFAR10_STATS = ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768))
# AutoDL xautodl/datasets/get_dataset_with_transform.py get_datasets(): 0..255 values divided by 255
def _over255(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(v / 255 for v in mean), tuple(v / 255 for v in std)


NB201_CIFAR10_STATS = _over255((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))
NB201_CIFAR100_STATS = _over255((129.3, 124.1, 112.4), (68.2, 65.4, 70.4))
NB201_IMAGENET16_STATS = _over255((122.68, 116.66, 104.01), (63.22, 61.26, 65.09))
# Standard ImageNet statistics (DARTS cnn/train_imagenet.py, AutoDL get_dataset_with_transform.py)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# SVHN: per-channel mean/std computed from the SVHN train split pixels (widely used values, not from a
# NAS paper's code and not recomputed here, since the data are not available offline)
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197))


def _crop_flip(size: int, padding: int, stats: tuple, flip: bool = True) -> T.Compose:
    ops: list[Any] = [T.RandomCrop(size, padding=padding)] + ([T.RandomHorizontalFlip()] if flip else [])
    return T.Compose(ops + [T.ToTensor(), T.Normalize(*stats)])


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (torchvision layout ``root/cifar-10-batches-py``).

    Train aug: RandomCrop(32, pad 4) + HFlip (DARTS ``utils.py``; NB201 uses the same ops, flip first).
    ``normalization``: ``"darts"`` uses DARTS' mean/std, ``"nb201"`` NAS-Bench-201's (use it with
    NB201's ``cifar-split.txt`` to reproduce the NB201 search).
    """

    num_classes, image_size, display_name, can_download = 10, 32, "CIFAR-10", True
    folder, tv_class, stats = "cifar-10-batches-py", tvd.CIFAR10, {"darts": DARTS_CIFAR10_STATS,
                                                                   "nb201": NB201_CIFAR10_STATS}

    def __init__(self, root: str = "data", batch_size: int = 64, eval_batch_size: int | None = None,
                 num_workers: int = 0, train_portion: float = 0.5, split_file: str | None = None,
                 bilevel: bool = True, download: bool = False, seed: int = 0,
                 normalization: str = "darts", cutout: int = 0, paired_batches: bool = True) -> None:
        super().__init__(root, batch_size, eval_batch_size, num_workers, train_portion, split_file,
                         bilevel, download, seed, cutout, paired_batches)
        if normalization not in self.stats:
            raise ValueError(f"normalization={normalization!r}; choose one of {sorted(self.stats)}")
        self.normalization = normalization

    def required_paths(self) -> list[Path]:
        return [Path(self.root) / self.folder]

    def build_train_set(self, transform: Transform) -> Dataset:
        return self.tv_class(self.root, train=True, transform=transform, download=self.download)

    def build_test_set(self, transform: Transform) -> Dataset:
        return self.tv_class(self.root, train=False, transform=transform, download=self.download)

    def train_transform(self) -> Transform:
        return _crop_flip(32, 4, self.stats[self.normalization])

    def eval_transform(self) -> Transform:
        return T.Compose([T.ToTensor(), T.Normalize(*self.stats[self.normalization])])


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (``root/cifar-100-python``); NB201 statistics only (DARTS defines none for it)."""

    num_classes, display_name = 100, "CIFAR-100"
    folder, tv_class, stats = "cifar-100-python", tvd.CIFAR100, {"nb201": NB201_CIFAR100_STATS}

    def __init__(self, root: str = "data", batch_size: int = 64, eval_batch_size: int | None = None,
                 num_workers: int = 0, train_portion: float = 0.5, split_file: str | None = None,
                 bilevel: bool = True, download: bool = False, seed: int = 0, cutout: int = 0,
                 paired_batches: bool = True) -> None:
        super().__init__(root, batch_size, eval_batch_size, num_workers, train_portion, split_file,
                         bilevel, download, seed, normalization="nb201", cutout=cutout,
                         paired_batches=paired_batches)


class SVHNDataModule(ImageDataModule):
    """SVHN (torchvision ``root/train_32x32.mat``, ``root/test_32x32.mat``); no flip, digits are not
    mirror-symmetric."""

    num_classes, image_size, display_name, can_download = 10, 32, "SVHN", True

    def required_paths(self) -> list[Path]:
        return [Path(self.root) / "train_32x32.mat", Path(self.root) / "test_32x32.mat"]

    def build_train_set(self, transform: Transform) -> Dataset:
        return tvd.SVHN(self.root, split="train", transform=transform, download=self.download)

    def build_test_set(self, transform: Transform) -> Dataset:
        return tvd.SVHN(self.root, split="test", transform=transform, download=self.download)

    def train_transform(self) -> Transform:
        return _crop_flip(32, 4, SVHN_STATS, flip=False)

    def eval_transform(self) -> Transform:
        return T.Compose([T.ToTensor(), T.Normalize(*SVHN_STATS)])


class ImageNet16DataModule(ImageDataModule):
    """ImageNet16-120 (NB201): the first 120 classes of 16x16 downsampled ImageNet.

    Files are read from ``root/ImageNet16`` if that folder exists, else from ``root``. Train aug
    HFlip + RandomCrop(16, pad 2) (AutoDL ``get_dataset_with_transform.py``).
    """

    num_classes, image_size, display_name = 120, 16, "ImageNet16-120"

    def data_dir(self) -> Path:
        sub = Path(self.root) / "ImageNet16"
        return sub if sub.is_dir() else Path(self.root)

    def required_paths(self) -> list[Path]:
        return [self.data_dir() / n for n in ImageNet16Dataset.train_files + ImageNet16Dataset.test_files]

    def missing_data_fix(self) -> str:
        return ("it cannot be downloaded automatically: get the 16x16 'Downsampled ImageNet' pickles "
                "(Imagenet16_train / Imagenet16_val, https://image-net.org/download-images, "
                "Chrabaszcz et al. 2017) and pass --data.root DIR where DIR (or DIR/ImageNet16) "
                "holds train_data_batch_1..10 and val_data")

    def build_train_set(self, transform: Transform) -> Dataset:
        return ImageNet16Dataset(self.data_dir(), True, transform, self.num_classes)

    def build_test_set(self, transform: Transform) -> Dataset:
        return ImageNet16Dataset(self.data_dir(), False, transform, self.num_classes)

    def train_transform(self) -> Transform:
        return _crop_flip(16, 2, NB201_IMAGENET16_STATS)

    def eval_transform(self) -> Transform:
        return T.Compose([T.ToTensor(), T.Normalize(*NB201_IMAGENET16_STATS)])


class ImageNetDataModule(ImageDataModule):
    """ImageNet-1k in ImageFolder layout (``root/train``, ``root/val``).

    ImageFolder lists images class by class, so the search split is taken after a seeded
    permutation (an index split would give the two halves disjoint classes).
    Train aug from DARTS ``train_imagenet.py``: RandomResizedCrop 224 + HFlip + ColorJitter(0.4, 0.4,
    0.4, 0.2); eval: Resize 256 + CenterCrop 224.
    """

    num_classes, image_size, display_name, shuffle_before_split = 1000, 224, "ImageNet", True

    def required_paths(self) -> list[Path]:
        return [Path(self.root) / "train", Path(self.root) / "val"]

    def missing_data_fix(self) -> str:
        return ("it cannot be downloaded automatically: get ILSVRC2012 from https://image-net.org, "
                "put train/ and val/ (one sub-folder per class) under DIR and pass --data.root DIR")

    def build_train_set(self, transform: Transform) -> Dataset:
        return tvd.ImageFolder(os.path.join(self.root, "train"), transform=transform)

    def build_test_set(self, transform: Transform) -> Dataset:
        return tvd.ImageFolder(os.path.join(self.root, "val"), transform=transform)

    def train_transform(self) -> Transform:
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                          T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                          T.ToTensor(), T.Normalize(*IMAGENET_STATS)])

    def eval_transform(self) -> Transform:
        return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(*IMAGENET_STATS)])


DATAMODULES: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "svhn": SVHNDataModule,
    "imagenet16-120": ImageNet16DataModule,
    "imagenet": ImageNetDataModule,
}


def datamodule_from_run(run: Path, data: str | None = None, data_root: str | None = None):
    """The validation data to score on: ``--data NAME``, else the run's ``config.yaml``, else digits.

    Returns:
        The data module, set up for fitting, and a short description of where it came from.
    """
    config = run / "config.yaml"
    if data is None and config.is_file():
        with open(config) as f:
            section = (yaml.safe_load(f) or {}).get("data") or {}
        class_path = section.get("class_path")
        if not class_path:
            raise ValueError(f"{config}: no data.class_path; pass --data {{{','.join(DATAMODULES)}}}")
        module_name, _, class_name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        init_args = dict(section.get("init_args") or {})
        if data_root is not None:
            init_args["root"] = data_root
        source = f"{class_path} from {config}"
    else:
        name = data or "digits"
        if name not in DATAMODULES:
            raise ValueError(f"--data {name!r}: unknown data set; accepted: {', '.join(DATAMODULES)}")
        cls = DATAMODULES[name]
        init_args = {} if data_root is None else {"root": data_root}
        source = name
    datamodule = cls(**init_args)
    datamodule.setup("fit")
    return datamodule, source
