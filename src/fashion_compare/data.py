"""Raw Fashion-MNIST: find it, check it, read it, split it, save it as tensors.

The raw data is pinned, so any source yields the same data: IDX files by the MD5 of their
decompressed bytes (a local copy, Debian's package, the official mirror), the CSV layout by the
MD5 of its images and labels in canonical order. Canonical order (rows sorted by label, then
pixels) is also what the split is drawn from, so it does not depend on how a file orders its
rows: both layouts give bit-identical splits.
"""

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import NUM_CLASSES
from .errors import DataError, first_line
from .files import save_torch

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIDE = 28
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


@dataclass(frozen=True)
class RawSplit:
    name: str  # "train" or "test"
    images_file: str
    labels_file: str
    csv_file: str
    count: int
    images_md5: str  # of the decompressed IDX bytes
    labels_md5: str
    canonical_md5: tuple  # of the uint8 image and label arrays in canonical order (see canonical_order)


RAW_SPLITS = (
    RawSplit("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "fashion-mnist_train.csv",
             60000, "f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
             ("16e21b8994fefb81533abd2d4e832b72", "d0b4ce6f57f805d4792e44c22fa64992")),
    RawSplit("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "fashion-mnist_test.csv",
             10000, "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965",
             ("fe12174688d1af8122dba81a1c4b073d", "ad92d529f7ea7e5b75c94e6700fdfe52")),
)


@dataclass
class Dataset:
    images: np.ndarray  # uint8, N x 28 x 28
    labels: np.ndarray  # int64, N


# ---------------------------------------------------------------- IDX and CSV readers

def read_bytes(path) -> bytes:
    """The file's bytes, decompressed when it ends in .gz."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({first_line(error, 120)}); the file is damaged: replace it with "
                        "a good copy, or remove it to have the prepare stage find or download another") from None


def parse_idx(content: bytes, path, magic: int, shape_tail=()) -> np.ndarray:
    """Parse IDX bytes (big-endian header, then unsigned bytes), checking every field."""
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{path}: truncated IDX header ({len(content)} bytes)")
    found_magic = int.from_bytes(content[:4], "big")
    if found_magic != magic:
        raise DataError(f"{path}: magic number 0x{found_magic:08x}, expected 0x{magic:08x}")
    dims = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != tuple(shape_tail):
        raise DataError(f"{path}: item shape {dims[1:]}, expected {tuple(shape_tail)}")
    expected_size = header_size + int(np.prod(dims))
    if len(content) != expected_size:
        raise DataError(f"{path}: {len(content)} bytes, expected {expected_size} for dimensions {dims}")
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(dims)


def read_idx_pair(images_path, labels_path, count=None, md5s=None) -> Dataset:
    """Read an images/labels IDX pair; check counts, label range and (optionally) MD5s."""
    images_bytes, labels_bytes = read_bytes(images_path), read_bytes(labels_path)
    images = parse_idx(images_bytes, images_path, IDX_IMAGES_MAGIC, (IMAGE_SIDE, IMAGE_SIDE))
    labels = parse_idx(labels_bytes, labels_path, IDX_LABELS_MAGIC)
    if count is not None and len(images) != count:
        raise DataError(f"{images_path}: {len(images)} images, expected {count}")
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    _check_labels(labels, labels_path)
    if md5s is not None:
        for path, content, expected in ((images_path, images_bytes, md5s[0]), (labels_path, labels_bytes, md5s[1])):
            found = hashlib.md5(content).hexdigest()
            if found != expected:
                raise DataError(f"{path}: MD5 of the decompressed bytes is {found}, expected {expected}"
                                " (corrupted, or not Fashion-MNIST)")
    return Dataset(images.copy(), labels.astype(np.int64))


def read_csv(path, count=None) -> Dataset:
    """Read the CSV layout: a `label` column and 784 pixel columns, one row per image."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, low_memory=False)  # whole-column dtypes: no DtypeWarning on bad rows
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read CSV ({str(error).splitlines()[0]})") from None
    pixels = IMAGE_SIDE * IMAGE_SIDE
    if "label" not in frame.columns:
        raise DataError(f"{path}: no 'label' column")
    if frame.shape[1] != pixels + 1:
        raise DataError(f"{path}: {frame.shape[1]} columns, expected {pixels + 1} (label + {pixels} pixels)")
    if count is not None and len(frame) != count:
        raise DataError(f"{path}: {len(frame)} rows, expected {count}")
    values = frame.drop(columns="label")
    if not all(np.issubdtype(dtype, np.integer) for dtype in values.dtypes) or not np.issubdtype(
            frame["label"].dtype, np.integer):
        raise DataError(f"{path}: non-integer values (expected pixels 0..255 and labels 0..9)")
    array = values.to_numpy()
    if array.min() < 0 or array.max() > 255:
        raise DataError(f"{path}: pixel values outside 0..255")
    labels = frame["label"].to_numpy().astype(np.int64)
    _check_labels(labels, path)
    return Dataset(array.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels)


def canonical_order(dataset: Dataset) -> Dataset:
    """The rows sorted by (label, pixel bytes): an order that does not depend on the file's."""
    n = len(dataset.labels)
    keys = np.concatenate([dataset.labels.astype(np.uint8)[:, None], dataset.images.reshape(n, -1)], axis=1)
    order = np.argsort(np.ascontiguousarray(keys).view(np.dtype((np.void, keys.shape[1]))).ravel(), kind="stable")
    return Dataset(dataset.images[order], dataset.labels[order])


def canonical_md5(dataset: Dataset) -> tuple:
    """MD5s of the images and labels (as uint8) of a dataset already in canonical order."""
    return (hashlib.md5(np.ascontiguousarray(dataset.images).tobytes()).hexdigest(),
            hashlib.md5(dataset.labels.astype(np.uint8).tobytes()).hexdigest())


def _check_labels(labels, path):
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels outside 0..{NUM_CLASSES - 1}")


# ---------------------------------------------------------------- finding the raw files

def _idx_path(directory: Path, name: str):
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _has_idx(directory: Path) -> bool:
    return all(_idx_path(directory, name) for split in RAW_SPLITS for name in (split.images_file, split.labels_file))


def _has_csv(directory: Path) -> bool:
    return all((directory / split.csv_file).is_file() for split in RAW_SPLITS)


MIRRORS_ENV = "FASHION_MNIST_MIRRORS"  # space-separated base URLs, tried in order, instead of torchvision's
TIMEOUT_ENV = "FASHION_MNIST_TIMEOUT"  # seconds to connect, and between two reads (default 30)
ATTEMPTS = 2  # per file and mirror


def download_mirrors() -> list:
    from torchvision.datasets import FashionMNIST

    return os.environ.get(MIRRORS_ENV, "").split() or list(FashionMNIST.mirrors)


def _fetch(url: str, target: Path, timeout: float):
    """One HTTP(S) download to `target`, atomically; `timeout` bounds the connect and every read."""
    import urllib.request

    from .files import atomic_path

    request = urllib.request.Request(url, headers={"User-Agent": "fashion-compare"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        content = response.read()  # at most 26 MB
    with atomic_path(target) as tmp:
        tmp.write_bytes(content)


def download(directory: Path):
    """Download the four .gz files (torchvision's file list and published MD5s) from the first mirror that
    answers; each file gets ATTEMPTS tries per mirror, each try a connect and read timeout."""
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import check_integrity

    directory.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get(TIMEOUT_ENV) or 30)
    for filename, md5 in FashionMNIST.resources:
        target, failures = directory / filename, []
        for mirror in download_mirrors():
            url = mirror.rstrip("/") + "/" + filename
            for _ in range(ATTEMPTS):
                try:
                    _fetch(url, target, timeout)
                except Exception as error:  # timeouts, refused connections, HTTP errors: try again, then on
                    reason = "no answer within the timeout" if "timed out" in str(error) else first_line(error, 120)
                    failures.append(f"{url}: {reason}")
                    continue
                if check_integrity(str(target), md5):
                    break
                target.unlink(missing_ok=True)
                failures.append(f"{url}: MD5 differs from the published one")
            else:
                continue
            break
        else:
            raise DataError(f"download failed: {failures[-1]} ({len(failures)} tries; set {MIRRORS_ENV} to a "
                            f"mirror you can reach, {TIMEOUT_ENV} to wait longer, or copy the files into data/raw)")


def _raw_files_present(directory: Path) -> list:
    names = [f"{name}{suffix}" for split in RAW_SPLITS for name in (split.images_file, split.labels_file)
             for suffix in (".gz", "")] + [split.csv_file for split in RAW_SPLITS]
    return [name for name in names if (directory / name).is_file()]


def locate_raw(raw_dir, debian_dir=DEBIAN_DIR, fetch=download, required=False):
    """Where the raw files are, as (directory, layout). Downloads into raw_dir only as a last resort.

    `required` (data.raw_dir set to a folder of the user's): that folder must hold a complete copy; no
    fallback to another copy. A folder with only some of the files is an error either way."""
    raw_dir = Path(raw_dir)
    if _has_idx(raw_dir):
        return raw_dir, "idx"
    if _has_csv(raw_dir):
        return raw_dir, "csv"
    present = _raw_files_present(raw_dir)
    if present or required:
        what = f"only {', '.join(present)}" if present else "no Fashion-MNIST files" if raw_dir.is_dir() else \
            "does not exist"
        raise DataError(f"{raw_dir}: {what}; data.raw_dir needs the four IDX files (.gz or not) or the two CSV "
                        "files (see README); fix the folder or set data.raw_dir back to data/raw")
    if _has_idx(Path(debian_dir)):
        return Path(debian_dir), "idx"
    try:
        fetch(raw_dir)
    except DataError as error:
        raise DataError(
            f"no Fashion-MNIST files in {raw_dir} or {debian_dir}, and {error}; "
            "install them with `apt-get install dataset-fashion-mnist` or set data.raw_dir"
        ) from None
    if not _has_idx(raw_dir):
        raise DataError(f"download into {raw_dir} did not produce the four IDX files")
    return raw_dir, "idx"


def load_raw(raw_dir, debian_dir=DEBIAN_DIR, fetch=download, required=False):
    """The checked raw train and test sets in canonical order, and where they came from."""
    directory, layout = locate_raw(raw_dir, debian_dir, fetch, required)
    sets = {}
    for split in RAW_SPLITS:
        if layout == "idx":
            dataset = read_idx_pair(_idx_path(directory, split.images_file), _idx_path(directory, split.labels_file),
                                    split.count, (split.images_md5, split.labels_md5))
            sets[split.name] = canonical_order(dataset)
        else:
            path = directory / split.csv_file
            dataset = canonical_order(read_csv(path, split.count))
            found = canonical_md5(dataset)
            if found != split.canonical_md5:
                raise DataError(f"{path}: not the original Fashion-MNIST {split.name} set (MD5 of its images and "
                                f"labels, sorted, is {found[0]}/{found[1]}; expected "
                                f"{split.canonical_md5[0]}/{split.canonical_md5[1]})")
            sets[split.name] = dataset
    return sets["train"], sets["test"], f"{directory} ({layout})"


# ---------------------------------------------------------------- preparing tensors

def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` of the positions 0..len(labels)-1, stratified by label and seeded, in order (all of them for 0 or
    more than there are)."""
    from sklearn.model_selection import train_test_split  # here: the train stages import this module too

    if not size or size >= len(labels):
        return np.arange(len(labels))
    index, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(index)


def stratified_sample(dataset: Dataset, size: int, seed: int) -> Dataset:
    if size >= len(dataset.labels):
        return dataset
    index = stratified_indices(dataset.labels, size, seed)
    return Dataset(dataset.images[index], dataset.labels[index])


def split_train_val(dataset: Dataset, val_fraction: float, seed: int):
    """Stratified, seeded train/validation split; returns (train, val)."""
    from sklearn.model_selection import train_test_split

    try:
        train_index, val_index = train_test_split(np.arange(len(dataset.labels)), test_size=val_fraction,
                                                  stratify=dataset.labels, random_state=seed)
    except ValueError:  # fewer validation (or training) images than classes
        raise DataError(f"data.val_fraction {val_fraction} of {len(dataset.labels)} images leaves a split with "
                        f"fewer than {NUM_CLASSES} images, one per class at least; raise it (or "
                        "data.subset)") from None
    pick = lambda index: Dataset(dataset.images[np.sort(index)], dataset.labels[np.sort(index)])  # noqa: E731
    return pick(train_index), pick(val_index)


def to_tensors(dataset: Dataset) -> dict:
    """float32 images in [0, 1], shape N x 1 x 28 x 28, and int64 labels."""
    images = torch.from_numpy(dataset.images).to(torch.float32).div_(255.0).unsqueeze(1)
    return {"images": images.contiguous(), "labels": torch.from_numpy(dataset.labels)}


TEST_SAMPLE_SEED = 0  # the test images of a subset run do not depend on `seed`: a seed study's runs are paired


def prepare(train: Dataset, test: Dataset, val_fraction: float, subset: int, seed: int):
    """Subset (when asked), split, scale. Returns {'train'|'val'|'test': tensors}.

    `seed` draws the training subset and the validation split; the test set is the whole 10k, or with a
    subset a stratified sample that is the same for every seed."""
    if subset:
        test_size = max(NUM_CLASSES, round(subset * len(test.labels) / len(train.labels)))
        train = stratified_sample(train, subset, seed)
        test = stratified_sample(test, test_size, TEST_SAMPLE_SEED)
    train, val = split_train_val(train, val_fraction, seed)
    return {"train": to_tensors(train), "val": to_tensors(val), "test": to_tensors(test)}


def split_summary(splits: dict) -> dict:
    return {name: {"size": len(tensors["labels"]),
                   "class_counts": torch.bincount(tensors["labels"], minlength=NUM_CLASSES).tolist()}
            for name, tensors in splits.items()}


def save_splits(splits: dict, directory):
    for name, tensors in splits.items():
        save_torch(Path(directory) / f"{name}.pt", tensors)


def load_split(directory, name) -> dict:
    path = Path(directory) / f"{name}.pt"
    try:
        return torch.load(path, weights_only=True, mmap=True)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the prepare stage first (dvc repro prepare)") from None
    except Exception as error:  # truncated or overwritten: torch's message names neither the file nor the fix
        raise DataError(f"{path}: not readable ({first_line(error, 160)}); run `dvc repro --force prepare`") from None
