"""darht.data: tiny files in the real formats, corruption cases, loader order/sharding, augmentation,
safe pickles, safe downloads."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from darht.data.base import ImageData, dataset_info, load_dataset, split_train_val
from darht.data.download import download, safe_extract
from darht.data.loader import Augment, Loader
from darht.errors import DarhtError
from darht.registry import DATASETS

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_default_data(tmp_path, monkeypatch):
    """Default search dirs point into tmp (except /usr/share), so a user's cache never leaks in."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DARHT_DATA", raising=False)


# ---- writers for the real formats ---------------------------------------------------------------

def write_idx(path: Path, arr: np.ndarray, gz: bool = True, magic: bytes | None = None) -> None:
    header = magic or bytes([0, 0, 0x08, arr.ndim])
    raw = header + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_fmnist(d: Path, gz: bool = True, n=(7, 5)) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, stem, k in (("train", "train", n[0]), ("test", "t10k", n[1])):
        x = rng.integers(0, 256, (k, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, k, dtype=np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(d / f"{stem}-images-idx3-ubyte{sfx}", x, gz)
        write_idx(d / f"{stem}-labels-idx1-ubyte{sfx}", y, gz)
        out[split] = (x, y)
    return out


def cifar_batch(n: int, num_classes: int, labels_key: bytes, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            labels_key: [int(v) for v in rng.integers(0, num_classes, n)], b"batch_label": b"x"}


def make_cifar10(d: Path, protocol: int = 2) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batches[name] = cifar_batch(3, 10, b"labels", i)
        (d / name).write_bytes(pickle.dumps(batches[name], protocol=protocol))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


def make_cifar100(d: Path) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    batches = {"train": cifar_batch(6, 100, b"fine_labels", 1), "test": cifar_batch(4, 100, b"fine_labels", 2)}
    for k, b in batches.items():
        b[b"coarse_labels"] = [0] * len(b[b"fine_labels"])
        (d / k).write_bytes(pickle.dumps(b, protocol=2))
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def make_targz(src_dir: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src_dir, arcname=src_dir.name)
    return out


def save_img(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def sha256_of(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---- ImageData, registry, split_train_val -------------------------------------------------------

def test_registry_has_all_datasets():
    for name in ("fashion-mnist", "cifar10", "cifar100", "tiny-imagenet", "imagefolder", "digits", "synthetic"):
        assert name in DATASETS.names()
    with pytest.raises(DarhtError, match="unknown dataset"):
        load_dataset("mnist-nope")
    with pytest.raises(DarhtError, match="split"):
        load_dataset("synthetic", "validation")
    with pytest.raises(DarhtError, match="unknown option.*size"):
        load_dataset("cifar10", "train", size=32)


def test_imagedata_basics_and_validation():
    x = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    d = ImageData(x, torch.tensor([0, 1, 2, 1]), ["a", "b", "c"], "t", "loc")
    assert len(d) == 4 and d.num_classes == 3 and d.shape == (3, 2, 2)
    assert torch.equal(d.float_x(), x.float() / 255)
    s = d.subset([3, 0])
    assert torch.equal(s.x, x[[3, 0]]) and s.y.tolist() == [1, 0] and s.classes == ["a", "b", "c"]
    assert d.subset(torch.tensor([True, False, False, True])).y.tolist() == [0, 1]
    with pytest.raises(DarhtError, match="outside the 3 classes"):
        ImageData(x, torch.tensor([0, 1, 3, 1]), ["a", "b", "c"], "t", "loc")
    with pytest.raises(DarhtError, match="4 images but 3 labels"):
        ImageData(x, torch.tensor([0, 1, 2]), ["a", "b", "c"])


def test_split_train_val_disjoint_and_seeded():
    d = load_dataset("synthetic", "train", n=100)
    tr, va = split_train_val(d, 0.2, seed=1)
    assert len(tr) == 80 and len(va) == 20
    # identify examples by content: synthetic images are distinct with overwhelming probability
    key = lambda data: {bytes(v.numpy().tobytes()) for v in data.x}
    assert key(tr).isdisjoint(key(va)) and key(tr) | key(va) == key(d)
    tr2, va2 = split_train_val(d, 0.2, seed=1)
    assert torch.equal(va.x, va2.x)
    _, va3 = split_train_val(d, 0.2, seed=2)
    assert not torch.equal(va.x, va3.x)
    with pytest.raises(DarhtError):
        split_train_val(d, 1.0, 0)


# ---- Fashion-MNIST (IDX) ------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_roundtrip(tmp_path, gz):
    ref = make_fmnist(tmp_path / "fashion-mnist", gz=gz)
    for split in ("train", "test"):
        d = load_dataset("fashion-mnist", split, root=tmp_path / "fashion-mnist")
        x, y = ref[split]
        assert d.x.dtype == torch.uint8 and d.shape == (1, 28, 28)
        assert torch.equal(d.x[:, 0], torch.from_numpy(x)) and d.y.tolist() == y.tolist()
        assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    # root may also be the parent of a fashion-mnist/ directory
    assert len(load_dataset("fashion-mnist", "test", root=tmp_path)) == 5


def _corrupt_fmnist(kind: str, d: Path) -> str:
    """Damage one file of a valid set; returns the name the error must mention."""
    img, lbl = d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz"
    x = np.zeros((7, 28, 28), np.uint8)
    if kind == "magic":
        write_idx(img, x, magic=b"\x00\x00\x08\x01")
    elif kind == "truncated":
        raw = gzip.decompress(img.read_bytes())
        img.write_bytes(gzip.compress(raw[:-100]))
    elif kind == "too-long":
        raw = gzip.decompress(img.read_bytes())
        img.write_bytes(gzip.compress(raw + b"\x00"))
    elif kind == "bad-gzip":
        img.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate" * 3)
    elif kind == "cut-gzip":
        img.write_bytes(img.read_bytes()[:50])
    elif kind == "count":
        write_idx(lbl, np.zeros(6, np.uint8))
        return lbl.name
    elif kind == "label-range":
        write_idx(lbl, np.array([0, 1, 2, 3, 4, 10, 5], np.uint8))
        return lbl.name
    return img.name


@pytest.mark.parametrize("kind", ["magic", "truncated", "too-long", "bad-gzip", "cut-gzip", "count", "label-range"])
def test_fashion_mnist_corrupt_files(tmp_path, kind):
    d = tmp_path / "fm"
    make_fmnist(d)
    fname = _corrupt_fmnist(kind, d)
    with pytest.raises(DarhtError) as e:
        load_dataset("fashion-mnist", "train", root=d)
    msg = str(e.value)
    assert "\n" not in msg and (fname in msg or "train-images" in msg)


def test_missing_directory_is_a_clear_error(tmp_path):
    for name in ("fashion-mnist", "cifar10", "cifar100", "tiny-imagenet", "imagefolder"):
        with pytest.raises(DarhtError, match="not found"):
            load_dataset(name, "train", root=tmp_path / "nope")


def test_fashion_mnist_system_install():
    # no root: the default search reaches /usr/share/datasets/fashion-mnist
    tr = load_dataset("fashion-mnist", "train")
    te = load_dataset("fashion-mnist", "test")
    assert len(tr) == 60000 and len(te) == 10000
    assert tr.shape == (1, 28, 28) and tr.x.dtype == torch.uint8 and tr.num_classes == 10
    assert torch.bincount(tr.y).tolist() == [6000] * 10 and torch.bincount(te.y).tolist() == [1000] * 10
    assert tr.location == str(FMNIST_SYSTEM)


# ---- CIFAR (pickles) ----------------------------------------------------------------------------

def _check_cifar10(d: ImageData, batches: dict, split: str) -> None:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data = np.concatenate([batches[n][b"data"] for n in names])
    labels = sum((batches[n][b"labels"] for n in names), [])
    assert d.shape == (3, 32, 32) and d.x.dtype == torch.uint8 and len(d) == len(data)
    # channel planes: first 1024 values red, next green, last blue, rows of 32
    assert torch.equal(d.x[1, 0], torch.from_numpy(data[1, :1024].reshape(32, 32)))
    assert torch.equal(d.x[2, 2], torch.from_numpy(data[2, 2048:].reshape(32, 32)))
    assert torch.equal(d.x.reshape(len(d), -1), torch.from_numpy(data))
    assert d.y.tolist() == labels and d.classes == [f"c{i}" for i in range(10)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_folder(tmp_path, protocol):
    batches = make_cifar10(tmp_path / "cifar-10-batches-py", protocol)
    for split in ("train", "test"):
        _check_cifar10(load_dataset("cifar10", split, root=tmp_path), batches, split)


def test_cifar10_targz_matches_folder(tmp_path):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    batches = make_cifar10(folder)
    make_targz(folder, tmp_path / "cifar-10-python.tar.gz")
    d = load_dataset("cifar10", "train", root=tmp_path)
    assert d.location.endswith("cifar-10-python.tar.gz")
    _check_cifar10(d, batches, "train")
    _check_cifar10(load_dataset("cifar10", "test", root=tmp_path / "cifar-10-python.tar.gz"), batches, "test")


def test_cifar100_fine_labels(tmp_path):
    batches = make_cifar100(tmp_path / "cifar-100-python")
    d = load_dataset("cifar100", "test", root=tmp_path)
    assert len(d) == 4 and d.num_classes == 100 and d.classes[99] == "f99"
    assert d.y.tolist() == batches["test"][b"fine_labels"]
    assert torch.equal(d.x.reshape(4, -1), torch.from_numpy(batches["test"][b"data"]))


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_cifar_refuses_code_in_pickle(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    make_cifar10(d)
    marker = tmp_path / "pwned"
    (d / "data_batch_2").write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": []}, protocol=2))
    with pytest.raises(DarhtError, match="refusing to unpickle 'posix.mkdir'.*|refusing to unpickle 'os.mkdir'"):
        load_dataset("cifar10", "train", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "label-range", "count", "shape", "missing", "not-dict"])
def test_cifar_corrupt_batches(tmp_path, kind):
    d = tmp_path / "cifar-10-batches-py"
    batches = make_cifar10(d)
    b = dict(batches["data_batch_3"])
    target = d / "data_batch_3"
    if kind == "truncated":
        target.write_bytes(target.read_bytes()[:200])
    elif kind == "missing":
        target.unlink()
    else:
        if kind == "label-range":
            b[b"labels"] = [0, 10, 1]
        elif kind == "count":
            b[b"labels"] = [0, 1]
        elif kind == "shape":
            b[b"data"] = b[b"data"][:, :3000]
        elif kind == "not-dict":
            b = [1, 2, 3]
        target.write_bytes(pickle.dumps(b, protocol=2))
    with pytest.raises(DarhtError) as e:
        load_dataset("cifar10", "train", root=tmp_path)
    assert "data_batch_3" in str(e.value) and "\n" not in str(e.value)


def test_cifar_corrupt_archive(tmp_path):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    make_cifar10(folder)
    arc = make_targz(folder, tmp_path / "cifar-10-python.tar.gz")
    arc.write_bytes(arc.read_bytes()[:300])
    with pytest.raises(DarhtError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", "train", root=tmp_path)


# ---- Tiny ImageNet, imagefolder -----------------------------------------------------------------

def make_tiny(root: Path, hw: int = 16) -> dict:
    d = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # unsorted on purpose: labels follow sorted order
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (d / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tcat\nn03\tbus, coach\nn99\tother\n")
    rng = np.random.default_rng(0)
    pix = {}
    for w in wnids:
        for i in range(2):
            a = rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8)
            save_img(d / "train" / w / "images" / f"{w}_{i}.JPEG", a, "PNG")  # lossless content, real name
            pix[(w, i)] = a
    # one grayscale image: converted to 3 equal channels
    g = rng.integers(0, 256, (hw, hw), dtype=np.uint8)
    save_img(d / "train" / "n02" / "images" / "n02_2.JPEG", g, "PNG")
    pix[("n02", 2)] = np.repeat(g[..., None], 3, axis=2)
    lines = []
    for i, w in enumerate(["n02", "n03", "n01"]):
        a = rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8)
        save_img(d / "val" / "images" / f"val_{i}.JPEG", a, "PNG")
        pix[("val", i)] = a
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t{hw}\t{hw}")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return pix


def test_tiny_imagenet_layout(tmp_path):
    pix = make_tiny(tmp_path)
    tr = load_dataset("tiny-imagenet", "train", root=tmp_path)
    assert tr.classes == ["goldfish", "cat", "bus"] and tr.shape == (3, 16, 16) and len(tr) == 7
    assert tr.y.tolist() == [0, 0, 1, 1, 1, 2, 2]  # n01, n01, n02 x3, n03 x2
    assert torch.equal(tr.x[0], torch.from_numpy(pix[("n01", 0)]).permute(2, 0, 1))
    assert torch.equal(tr.x[4], torch.from_numpy(pix[("n02", 2)]).permute(2, 0, 1))
    te = load_dataset("tiny-imagenet", "test", root=tmp_path / "tiny-imagenet-200")
    assert te.y.tolist() == [1, 2, 0]
    assert torch.equal(te.x[1], torch.from_numpy(pix[("val", 1)]).permute(2, 0, 1))
    small = load_dataset("tiny-imagenet", "test", root=tmp_path, size=8)
    assert small.shape == (3, 8, 8)
    info = dataset_info("tiny-imagenet", tmp_path)
    assert info["sizes"] == {"train": 7, "test": 3} and info["shape"] == [3, 16, 16] and info["num_classes"] == 3


@pytest.mark.parametrize("kind", ["bad-wnid", "bad-image", "missing-class", "missing-val-image"])
def test_tiny_imagenet_corrupt(tmp_path, kind):
    make_tiny(tmp_path)
    d = tmp_path / "tiny-imagenet-200"
    split, name = "test", "val_annotations.txt"
    if kind == "bad-wnid":
        with open(d / "val" / "val_annotations.txt", "a") as f:
            f.write("val_0.JPEG\tn77\t0\t0\t1\t1\n")
    elif kind == "bad-image":
        (d / "val" / "images" / "val_1.JPEG").write_bytes(b"not an image")
        name = "val_1.JPEG"
    elif kind == "missing-class":
        (d / "wnids.txt").write_text("n01\nn02\nn03\nn04\n")
        split, name = "train", "n04"
    elif kind == "missing-val-image":
        (d / "val" / "images" / "val_2.JPEG").unlink()
        name = "val_2.JPEG"
    with pytest.raises(DarhtError, match=name):
        load_dataset("tiny-imagenet", split, root=tmp_path)


def test_imagefolder_split_layout(tmp_path):
    rng = np.random.default_rng(1)
    imgs = {}
    for split, classes in (("train", ["dog", "cat"]), ("val", ["cat", "emu"])):
        for c in classes:
            for i in range(2):
                a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                save_img(tmp_path / split / c / f"{i}.png", a)
                imgs[(split, c, i)] = a
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored")
    tr = load_dataset("imagefolder", "train", root=tmp_path)
    te = load_dataset("imagefolder", "test", root=tmp_path)  # val/ serves as test
    assert tr.classes == te.classes == ["cat", "dog", "emu"]
    assert tr.y.tolist() == [0, 0, 1, 1] and te.y.tolist() == [0, 0, 2, 2]
    assert tr.shape == (3, 6, 5)
    assert torch.equal(te.x[3], torch.from_numpy(imgs[("val", "emu", 1)]).permute(2, 0, 1))


def test_imagefolder_flat_layout_gray_and_sizes(tmp_path):
    rng = np.random.default_rng(2)
    for c in ("a", "b"):
        for i in range(10):
            save_img(tmp_path / c / f"{i:02d}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    tr = load_dataset("imagefolder", "train", root=tmp_path)
    te = load_dataset("imagefolder", "test", root=tmp_path)
    assert len(tr) == 16 and len(te) == 4 and tr.shape == (1, 4, 4)  # every 5th file is test
    expected = np.array(Image.open(tmp_path / "b" / "09.png"))
    assert torch.equal(te.x[3, 0], torch.from_numpy(expected)) and te.y.tolist() == [0, 0, 1, 1]
    info = dataset_info("imagefolder", tmp_path)
    assert info["sizes"] == {"train": 16, "test": 4} and info["shape"] == [1, 4, 4]
    save_img(tmp_path / "a" / "00.png", rng.integers(0, 256, (5, 4), dtype=np.uint8))
    with pytest.raises(DarhtError, match="pass size"):
        load_dataset("imagefolder", "train", root=tmp_path)
    assert load_dataset("imagefolder", "train", root=tmp_path, size=3, channels=3).shape == (3, 3, 3)


# ---- digits, synthetic --------------------------------------------------------------------------

def test_digits():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == 359
    assert tr.shape == (1, 8, 8) and tr.x.dtype == torch.float32
    assert float(tr.x.min()) == 0.0 and float(tr.x.max()) == 1.0
    assert torch.equal(load_dataset("digits", "test").x, te.x)  # deterministic split
    from sklearn.datasets import load_digits
    raw = load_digits()
    # every test image is a real digit with its label
    table = {raw.data[i].tobytes(): raw.target[i] for i in range(len(raw.target))}
    assert all(table[(te.x[i].numpy().reshape(-1) * 16).astype(np.float64).tobytes()] == te.y[i]
               for i in range(5))


def test_synthetic_is_learnable():
    tr = load_dataset("synthetic", "train", n=256, num_classes=4, shape=(1, 12, 12), seed=3)
    te = load_dataset("synthetic", "test", n=128, num_classes=4, shape=(1, 12, 12), seed=3)
    assert tr.shape == (1, 12, 12) and tr.x.dtype == torch.uint8 and tr.num_classes == 4
    assert not torch.equal(tr.x[:128], te.x)
    assert torch.bincount(tr.y).tolist() == [64] * 4
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 5 * 5, 4))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for x, y in Loader(tr, 64, shuffle=True, seed=0):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (net(te.float_x()).argmax(1) == te.y).float().mean()
    assert acc > 0.9


# ---- Loader, Augment ----------------------------------------------------------------------------

def indexed_data(n: int) -> ImageData:
    """y = index, x = index as a pixel: batches reveal exactly which examples they hold."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageData(x, torch.arange(n), [str(i) for i in range(n)])


def epoch_ids(loader: Loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_loader_order_deterministic_per_seed_epoch():
    d = indexed_data(23)
    a, b = Loader(d, 5, shuffle=True, seed=7), Loader(d, 5, shuffle=True, seed=7)
    e0 = epoch_ids(a)
    assert sorted(e0) == list(range(23)) and e0 != list(range(23))
    a.set_epoch(1)
    e1 = epoch_ids(a)
    assert e1 != e0 and sorted(e1) == list(range(23))
    b.set_epoch(1)
    assert epoch_ids(b) == e1  # a fresh loader (resumed run) at epoch 1 sees epoch 1's order
    a.set_epoch(0)
    assert epoch_ids(a) == e0
    assert epoch_ids(Loader(d, 5, shuffle=True, seed=8)) != e0
    assert epoch_ids(Loader(d, 5)) == list(range(23))
    assert len(Loader(d, 5)) == 5 and len(Loader(d, 5, drop_last=True)) == 4
    assert len(epoch_ids(Loader(d, 5, drop_last=True))) == 20


def test_loader_batches_float_on_device():
    d = load_dataset("synthetic", "train", n=10, shape=(3, 4, 4))
    x, y = next(iter(Loader(d, 4, device=torch.device("cpu"))))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 4, 4) and y.dtype == torch.int64
    assert torch.equal(x, d.x[:4].float() / 255) and torch.equal(y, d.y[:4])
    assert d.x.dtype == torch.uint8  # stored data stays uint8
    x2, _ = next(iter(Loader(d, 4, resident=True)))
    assert torch.equal(x, x2)


@pytest.mark.parametrize("n,world", [(24, 3), (10, 3), (7, 4)])
def test_loader_ddp_sharding(n, world):
    d = indexed_data(n)
    shards = [epoch_ids(Loader(d, 2, shuffle=True, seed=3, rank=r, world_size=world)) for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)
    assert len({len(Loader(d, 2, rank=r, world_size=world)) for r in range(world)}) == 1
    ids = sum(shards, [])
    assert set(ids) == set(range(n))                      # coverage
    assert len(ids) - len(set(ids)) == per_rank * world - n  # only the wrap-around padding repeats
    if n % world == 0:
        assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1:])
    # the shards interleave the single-process permutation of the same seed and epoch
    full = epoch_ids(Loader(d, n, shuffle=True, seed=3))
    padded = (full + full)[:per_rank * world]
    assert all(shards[r] == padded[r::world] for r in range(world))


def test_augment_apply_is_a_real_shifted_crop():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 6, 7)
    aug = Augment(padding=2)
    top, left = torch.tensor([0, 3, 2]), torch.tensor([4, 1, 2])
    flip = torch.tensor([False, True, False])
    out = aug.apply(x, top, left, flip)
    xp = F.pad(x, (2, 2, 2, 2))
    for i in range(3):
        ref = xp[i, :, top[i]:top[i] + 6, left[i]:left[i] + 7]
        ref = ref.flip(-1) if flip[i] else ref
        assert torch.equal(out[i], ref)
    assert torch.equal(out[2], x[2])  # offset (p, p) unflipped = the identity
    # zero padding really enters: top=0 shifts the image down by 2, the first two rows are 0
    assert torch.equal(out[0, :, :2], torch.zeros(2, 2, 7))


def test_augment_random_batches():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 5, 5)
    aug = Augment(padding=1, flip=True)
    out = aug(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(1)))
    xp = F.pad(x, (1, 1, 1, 1))
    n_moved = 0
    for i in range(16):  # each output is one of the 3 x 3 x 2 candidate crops
        cands = [c for t in range(3) for l in range(3)
                 for c in (xp[i, :, t:t + 5, l:l + 5], xp[i, :, t:t + 5, l:l + 5].flip(-1))]
        assert any(torch.equal(out[i], c) for c in cands)
        n_moved += not torch.equal(out[i], x[i])
    assert n_moved > 8
    assert torch.equal(Augment(0, flip=False)(x, torch.Generator()), x)


def test_loader_augmentation_seeded_by_epoch():
    d = load_dataset("synthetic", "train", n=16, shape=(3, 8, 8))
    mk = lambda: Loader(d, 8, seed=5, augment=Augment(4, True))
    a, b = mk(), mk()
    xa = [x for x, _ in a]
    assert all(torch.equal(p, q) for p, q in zip(xa, [x for x, _ in b]))
    assert not torch.equal(xa[0], d.float_x()[:8])
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[0], xa[0])


# ---- download -----------------------------------------------------------------------------------

def test_download_file_url_tar_gz(tmp_path):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    batches = make_cifar10(folder)
    arc = make_targz(folder, tmp_path / "c10.tar.gz")
    root = tmp_path / "data"
    got = download("cifar10", root, url=arc.as_uri(), sha256=sha256_of(arc))
    assert got == root / "cifar-10-batches-py" and (got / "data_batch_5").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no temp left
    _check_cifar10(load_dataset("cifar10", "train", root=root), batches, "train")
    assert download("cifar10", root, url="file:///nonexistent") == got  # already present: no fetch


def test_download_checksum_mismatch(tmp_path):
    folder = tmp_path / "src" / "cifar-100-python"
    make_cifar100(folder)
    arc = make_targz(folder, tmp_path / "c100.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(DarhtError, match="sha256 mismatch"):
        download("cifar100", root, url=arc.as_uri(), sha256="0" * 64)
    assert not root.exists()  # nothing left behind, not even the directory the call created
    with pytest.raises(DarhtError, match="cannot download"):
        download("cifar100", root, url=(tmp_path / "missing.tar.gz").as_uri())
    with pytest.raises(DarhtError, match="no download"):
        download("digits", root)


def test_download_fashion_mnist_files(tmp_path):
    ref = make_fmnist(tmp_path / "mirror")
    root = tmp_path / "data"
    got = download("fashion-mnist", root, url=(tmp_path / "mirror").as_uri())
    assert got == root / "fashion-mnist"
    assert load_dataset("fashion-mnist", "test", root=root).y.tolist() == ref["test"][1].tolist()


def test_download_zip_without_checksum_prints_sha256(tmp_path, capsys):
    make_tiny(tmp_path / "src")
    arc = tmp_path / "tiny.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        for p in sorted((tmp_path / "src").rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "src").as_posix())
    got = download("tiny-imagenet", tmp_path / "data", url=arc.as_uri())
    assert got == tmp_path / "data" / "tiny-imagenet-200"
    assert sha256_of(arc) in capsys.readouterr().err
    assert load_dataset("tiny-imagenet", "test", root=tmp_path / "data").y.tolist() == [1, 2, 0]


def _evil_tar(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("tiny-imagenet-200/wnids.txt")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"n01\n"))
        if kind == "dotdot":
            m = tarfile.TarInfo("tiny-imagenet-200/../../evil")
            m.size = 3
            tf.addfile(m, io.BytesIO(b"bad"))
        elif kind == "absolute":
            m = tarfile.TarInfo(str(path.parent / "evil"))
            m.size = 3
            tf.addfile(m, io.BytesIO(b"bad"))
        elif kind in ("symlink", "hardlink"):
            m = tarfile.TarInfo("tiny-imagenet-200/link")
            m.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            m.linkname = "../../" if kind == "symlink" else "../evil"
            tf.addfile(m)
        elif kind == "device":
            m = tarfile.TarInfo("tiny-imagenet-200/dev")
            m.type = tarfile.CHRTYPE
            tf.addfile(m)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_download_refuses_malicious_tar(tmp_path, kind):
    arc = _evil_tar(tmp_path / "evil.tar.gz", kind)
    root = tmp_path / "a" / "data"
    with pytest.raises(DarhtError, match="refusing"):
        download("tiny-imagenet", root, url=arc.as_uri(), sha256=sha256_of(arc))
    assert not (tmp_path / "evil").exists() and not (tmp_path / "a" / "evil").exists()
    assert not root.exists() and not (tmp_path / "a").exists()  # the directories it made are gone too


def test_safe_extract_zip(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
    safe_extract(good, tmp_path / "out")
    assert (tmp_path / "out" / "tiny-imagenet-200" / "wnids.txt").read_text() == "n01\n"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("x/../../evil", "bad")
    with pytest.raises(DarhtError, match="refusing"):
        safe_extract(bad, tmp_path / "out2")
    assert not (tmp_path / "evil").exists()
    (tmp_path / "junk.zip").write_bytes(b"neither tar nor zip")
    with pytest.raises(DarhtError, match="not a tar or zip"):
        safe_extract(tmp_path / "junk.zip", tmp_path / "out3")


def test_dataset_info_synthetic():
    info = dataset_info("synthetic")
    assert info["sizes"] == {"train": 512, "test": 256} and info["num_classes"] == 10
    assert info["shape"] == [1, 28, 28] and info["name"] == "synthetic"


def test_digits_size_upsamples_in_range():
    from darht.data.base import load_dataset

    small = load_dataset("digits", "test")
    big = load_dataset("digits", "test", size=28)
    assert big.shape == (1, 28, 28) and len(big) == len(small)
    assert torch.equal(big.y, small.y)
    assert float(big.x.min()) >= 0.0 and float(big.x.max()) <= 1.0
    # bilinear upsampling preserves each image's mean closely
    assert torch.allclose(big.x.mean((1, 2, 3)), small.x.mean((1, 2, 3)), atol=0.05)
