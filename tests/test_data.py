import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_raw, free_port, idx_bytes, md5, write_csv_layout, write_idx_pair

from fashion_compare import data
from fashion_compare.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, DataError


def synthetic(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


# ---------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("compress", [True, False])
def test_idx_pair_round_trip(tmp_path, compress):
    images, labels = synthetic()
    images_path, labels_path = write_idx_pair(tmp_path, images, labels, compress=compress)
    dataset = data.read_idx_pair(images_path, labels_path, count=30)
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.labels.dtype == np.int64


def test_idx_checksum_of_decompressed_bytes(tmp_path):
    images, labels = synthetic()
    images_path, labels_path = write_idx_pair(tmp_path, images, labels)
    good = (md5(idx_bytes(images, IDX_IMAGES_MAGIC)), md5(idx_bytes(labels, IDX_LABELS_MAGIC)))
    data.read_idx_pair(images_path, labels_path, md5s=good)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: MD5 of the decompressed bytes is \w+, "
                                        r"expected 0+ \(corrupted"):
        data.read_idx_pair(images_path, labels_path, md5s=(good[0], "0" * 32))


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:10], "truncated IDX header"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number 0x00000801, expected 0x00000803"),
    (lambda b: b[:-5], "bytes, expected"),
    (lambda b: b + b"\x00", "bytes, expected"),
    (lambda b: b[:8] + (27).to_bytes(4, "big") + b[12:], r"item shape \(27, 28\), expected \(28, 28\)"),
])
def test_idx_corrupt_images_are_refused(tmp_path, corrupt, message):
    images, labels = synthetic()
    images_path, labels_path = write_idx_pair(tmp_path, images, labels, compress=False)
    images_path.write_bytes(corrupt(images_path.read_bytes()))
    with pytest.raises(DataError, match=message) as error:
        data.read_idx_pair(images_path, labels_path)
    assert str(error.value).startswith(str(images_path)) and "\n" not in str(error.value)


def test_idx_truncated_gzip_is_refused(tmp_path):
    images, labels = synthetic()
    images_path, labels_path = write_idx_pair(tmp_path, images, labels)
    images_path.write_bytes(images_path.read_bytes()[:200])
    with pytest.raises(DataError, match=f"{images_path}: cannot read .*; the file is damaged: replace it with a "
                                        "good copy, or remove it to have the prepare stage find or download another"):
        data.read_idx_pair(images_path, labels_path)


def test_idx_counts_and_labels_must_agree(tmp_path):
    images, labels = synthetic()
    paths = write_idx_pair(tmp_path, images, labels[:29])
    with pytest.raises(DataError, match="29 labels for 30 images"):
        data.read_idx_pair(*paths)
    paths = write_idx_pair(tmp_path, images, labels)
    with pytest.raises(DataError, match="30 images, expected 60000"):
        data.read_idx_pair(*paths, count=60000)
    bad_labels = labels.copy()
    bad_labels[3] = 10
    paths = write_idx_pair(tmp_path, images, bad_labels)
    with pytest.raises(DataError, match=r"labels outside 0\.\.9"):
        data.read_idx_pair(*paths)


# ---------------------------------------------------------------- CSV reader

def test_csv_layout_matches_idx(tmp_path, real_raw):
    _, test = real_raw
    path = tmp_path / "fashion-mnist_test.csv"
    write_csv_layout(test, path)
    dataset = data.read_csv(path, count=10000)
    np.testing.assert_array_equal(dataset.images, test.images)
    np.testing.assert_array_equal(dataset.labels, test.labels)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns="pixel784"), "784 columns, expected 785"),
    (lambda f: f.rename(columns={"label": "target"}), "no 'label' column"),
    (lambda f: f.assign(pixel5=f["pixel5"] + 300), r"pixel values outside 0\.\.255"),
    (lambda f: f.assign(label=f["label"] + 10), r"labels outside 0\.\.9"),
    (lambda f: f.assign(pixel1=0.5), "non-integer values"),
])
def test_csv_invalid_is_refused(tmp_path, edit, message):
    import pandas as pd

    images, labels = synthetic()
    path = tmp_path / "fashion-mnist_train.csv"
    write_csv_layout(data.Dataset(images, labels.astype(np.int64)), path)
    edit(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        data.read_csv(path)


def test_csv_row_count_checked(tmp_path):
    images, labels = synthetic()
    path = tmp_path / "fashion-mnist_train.csv"
    write_csv_layout(data.Dataset(images, labels.astype(np.int64)), path)
    with pytest.raises(DataError, match="30 rows, expected 60000"):
        data.read_csv(path, count=60000)


# ---------------------------------------------------------------- where the raw files come from

def fake_idx_dir(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for split in data.RAW_SPLITS:
        for name in (split.images_file, split.labels_file):
            (directory / f"{name}.gz").write_bytes(b"")
    return directory


def test_locate_prefers_raw_dir_then_debian(tmp_path):
    raw, debian = fake_idx_dir(tmp_path / "raw"), fake_idx_dir(tmp_path / "debian")
    assert data.locate_raw(raw, debian, fetch=pytest.fail) == (raw, "idx")
    assert data.locate_raw(tmp_path / "empty", debian, fetch=pytest.fail) == (debian, "idx")


def test_locate_accepts_csv_layout(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in data.RAW_SPLITS:
        (raw / split.csv_file).write_text("label\n")
    assert data.locate_raw(raw, tmp_path / "none", fetch=pytest.fail) == (raw, "csv")


def test_locate_downloads_only_as_last_resort(tmp_path):
    calls = []
    result = data.locate_raw(tmp_path / "raw", tmp_path / "none", fetch=lambda d: calls.append(fake_idx_dir(d)))
    assert calls == [tmp_path / "raw"] and result == (tmp_path / "raw", "idx")


def test_missing_data_offline_names_places_and_remedy(tmp_path):
    def offline(directory):
        raise DataError("download failed: <urlopen error [Errno -3] Temporary failure in name resolution>")

    with pytest.raises(DataError) as error:
        data.locate_raw(tmp_path / "raw", tmp_path / "debian", fetch=offline)
    message = str(error.value)
    assert "\n" not in message
    for part in (str(tmp_path / "raw"), str(tmp_path / "debian"), "apt-get install dataset-fashion-mnist",
                 "data.raw_dir", "download failed"):
        assert part in message


@pytest.fixture
def local_http_mirror(tmp_path):
    """A mirror directory served over HTTP on 127.0.0.1: the download path without the network."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(mirror)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield mirror, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_uses_torchvision_mirror_and_gz_checksums(tmp_path, monkeypatch, local_http_mirror):
    """The download path, from a loopback mirror: torchvision's mirror/resources, .gz MD5s checked."""
    from torchvision.datasets import FashionMNIST

    mirror, url = local_http_mirror

    resources = []
    for split in data.RAW_SPLITS:
        images, labels = synthetic(12)
        for name, content in ((split.images_file, idx_bytes(images, IDX_IMAGES_MAGIC)),
                              (split.labels_file, idx_bytes(labels, IDX_LABELS_MAGIC))):
            packed = gzip.compress(content)
            (mirror / f"{name}.gz").write_bytes(packed)
            resources.append((f"{name}.gz", md5(packed)))
    monkeypatch.setenv(data.MIRRORS_ENV, f"http://127.0.0.1:{free_port()}/ {url}")  # the first one is down
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    data.download(tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(name for name, _ in resources)

    monkeypatch.setattr(FashionMNIST, "resources", [(resources[0][0], "0" * 32)])
    with pytest.raises(DataError, match="download failed: .*MD5 differs from the published one"):
        data.download(tmp_path / "raw2")
    assert not list((tmp_path / "raw2").iterdir())


def test_a_mirror_that_never_answers_fails_in_one_line_within_the_timeout(tmp_path, monkeypatch):
    """A loopback socket that accepts connections and never replies: no hang, one line naming the URL."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts the connections; nobody ever reads or writes
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    monkeypatch.setenv(data.MIRRORS_ENV, url)
    monkeypatch.setenv(data.TIMEOUT_ENV, "1")
    started = time.perf_counter()
    try:
        with pytest.raises(DataError) as error:
            data.download(tmp_path / "raw")
    finally:
        silent.close()
    assert time.perf_counter() - started < 2 * data.ATTEMPTS + 5
    message = str(error.value)
    assert "\n" not in message and f"{url}train-images-idx3-ubyte.gz: no answer within the timeout" in message
    assert data.MIRRORS_ENV in message and data.TIMEOUT_ENV in message


def test_real_data_is_checked_and_complete(real_raw):
    train, test = real_raw
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_corrupted_real_copy_is_refused(tmp_path):
    raw = tmp_path / "raw"
    copy_raw(data.DEBIAN_DIR, raw)
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10  # still a valid IDX file, but not the original bytes
    labels.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match=f"{labels}: MD5 of the decompressed bytes"):
        data.load_raw(raw, fetch=pytest.fail)


# ---------------------------------------------------------------- split, subset, tensors

def test_split_is_stratified_disjoint_and_seeded(real_raw):
    train, _ = real_raw
    splits = data.prepare(train, real_raw[1], 0.25, 0, seed=7)
    assert [len(splits[s]["labels"]) for s in ("train", "val", "test")] == [45000, 15000, 10000]
    assert torch.bincount(splits["val"]["labels"]).tolist() == [1500] * 10
    assert torch.bincount(splits["train"]["labels"]).tolist() == [4500] * 10
    # disjoint and complete: the two halves together are the 60k training images, each once
    keys = lambda s: {hash(bytes(row)) for row in (s["images"] * 255).round().to(torch.uint8).flatten(1).numpy()}  # noqa: E731
    all_keys = {hash(bytes(row)) for row in train.images.reshape(60000, -1)}
    train_keys, val_keys = keys(splits["train"]), keys(splits["val"])
    assert not train_keys & val_keys and train_keys | val_keys == all_keys
    again = data.prepare(train, real_raw[1], 0.25, 0, seed=7)
    assert torch.equal(again["val"]["labels"], splits["val"]["labels"])
    assert torch.equal(again["val"]["images"], splits["val"]["images"])
    other = data.split_train_val(train, 0.25, seed=8)[1]
    assert not np.array_equal(other.images, (splits["val"]["images"] * 255).round().squeeze(1).numpy())


def test_tensors_scaled_and_shaped(real_raw):
    splits = data.prepare(*real_raw, 0.25, 600, seed=0)
    images = splits["train"]["images"]
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 28, 28)
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.99
    assert [len(splits[s]["labels"]) for s in ("train", "val", "test")] == [450, 150, 100]
    for split in ("train", "val", "test"):
        counts = torch.bincount(splits[split]["labels"], minlength=10)
        assert counts.max() - counts.min() <= 1, (split, counts)


def test_saved_splits_load_memory_mapped_and_equal(tmp_path, real_raw):
    """load_split maps the file instead of reading it: the tensors' bytes live in the file's pages."""
    splits = data.prepare(*real_raw, 0.25, 0, seed=0)
    data.save_splits(splits, tmp_path)
    loaded = data.load_split(tmp_path, "train")
    assert torch.equal(loaded["images"], splits["train"]["images"])
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(tmp_path / "train.pt") in maps.read_text()
    with pytest.raises(DataError, match="run the prepare stage first"):
        data.load_split(tmp_path, "missing")


def test_prepare_stage_reports_missing_data_in_one_line(tmp_path):
    """No local copy, no Debian package, no network: one line, exit 1, nothing written."""
    shutil.copy("params.yaml", tmp_path / "params.yaml")
    script = os.path.abspath("stages/prepare.py")
    code = ("import runpy, sys; from fashion_compare import data\n"
            "def offline(d): raise data.DataError('download failed: network unreachable')\n"
            "locate = data.locate_raw\n"
            "data.locate_raw = lambda raw_dir, *_: locate(raw_dir, data.Path('/nonexistent'), offline)\n"
            f"sys.argv = ['prepare.py']; runpy.run_path({script!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: no Fashion-MNIST files in data/raw")
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert not (tmp_path / "data" / "prepared").exists() and not (tmp_path / "metrics").exists()


# ---------------------------------------------------------------- both layouts pinned, in any row order

@pytest.fixture(scope="module")
def csv_copy(tmp_path_factory, real_raw):
    """The real data in the CSV layout, rows shuffled (as the popular Kaggle CSV is not in IDX order)."""
    folder = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    for split, dataset in zip(data.RAW_SPLITS, real_raw):
        order = rng.permutation(len(dataset.labels))
        write_csv_layout(data.Dataset(dataset.images[order], dataset.labels[order]), folder / split.csv_file)
    return folder


def test_csv_in_another_row_order_gives_the_same_split_as_idx(csv_copy):
    idx_train, idx_test, _ = data.load_raw("/nonexistent", fetch=pytest.fail)
    csv_train, csv_test, source = data.load_raw(csv_copy, fetch=pytest.fail)
    assert source.endswith("(csv)")
    from_idx = data.prepare(idx_train, idx_test, 0.25, 0, seed=42)
    from_csv = data.prepare(csv_train, csv_test, 0.25, 0, seed=42)
    for split in ("train", "val", "test"):
        for key in ("images", "labels"):
            assert torch.equal(from_idx[split][key], from_csv[split][key]), (split, key)


def test_csv_with_one_changed_pixel_is_refused(tmp_path, csv_copy):
    import pandas as pd

    for split in data.RAW_SPLITS:
        shutil.copy(csv_copy / split.csv_file, tmp_path / split.csv_file)
    test_csv = tmp_path / "fashion-mnist_test.csv"
    frame = pd.read_csv(test_csv)
    frame.loc[17, "pixel400"] = (frame.loc[17, "pixel400"] + 1) % 256
    frame.to_csv(test_csv, index=False)
    with pytest.raises(DataError, match=f"{test_csv}: not the original Fashion-MNIST test set"):
        data.load_raw(tmp_path, fetch=pytest.fail)


def test_a_users_raw_dir_must_be_complete_no_silent_fallback(tmp_path):
    with pytest.raises(DataError, match="does not exist; data.raw_dir needs the four IDX files"):
        data.locate_raw(tmp_path / "typo", fetch=pytest.fail, required=True)
    partial = tmp_path / "partial"
    copy_raw(data.DEBIAN_DIR, partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"only .*train-images-idx3-ubyte\.gz.*; data.raw_dir needs"):
        data.locate_raw(partial, fetch=pytest.fail)  # incomplete: an error even for the default folder


def test_too_small_validation_split_is_one_line(real_raw):
    with pytest.raises(DataError, match="data.val_fraction 0.001 of 600 images leaves a split with fewer than 10"):
        data.prepare(*real_raw, 0.001, 600, seed=0)


def test_truncated_prepared_split_is_named(tmp_path, real_raw):
    splits = data.prepare(*real_raw, 0.25, 600, seed=0)
    data.save_splits(splits, tmp_path)
    path = tmp_path / "train.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=f"{path}: not readable .*dvc repro --force prepare"):
        data.load_split(tmp_path, "train")


def test_corrupt_deflate_data_is_one_line(tmp_path):
    images, labels = synthetic()
    paths = write_idx_pair(tmp_path, images, labels)
    content = bytearray(paths[0].read_bytes())
    content[30:60] = bytes(30)  # inside the deflate stream
    paths[0].write_bytes(bytes(content))
    with pytest.raises(DataError, match=f"{paths[0]}: cannot read"):
        data.read_idx_pair(*paths)
