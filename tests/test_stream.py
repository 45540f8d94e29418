"""Streaming (darht.data.cache): a memory-mapped uint8 cache gives the same images and bit-identical
batches as an in-memory load, is built atomically and once, goes stale with its source, is chosen
automatically by size, and `darht data cache` builds it. Tiny files in the real formats."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from darht.data import cache as dc
from darht.data.base import ImageData, load_dataset, split_train_val
from darht.data.loader import Augment, Loader
from darht.errors import DarhtError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Default data and cache dirs inside tmp: a user's files never leak in or get written."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DARHT_DATA", raising=False)
    monkeypatch.delenv("DARHT_CACHE", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def save_img(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def make_folder(root: Path, per_class: int = 9, hw=(6, 5), classes=("cat", "dog", "emu"), seed=0) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png."""
    rng = np.random.default_rng(seed)
    for split, k in (("train", per_class), ("test", 2)):
        for c in classes:
            for i in range(k):
                save_img(root / split / c / f"{i:03d}.png", rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    return root


def make_tiny(root: Path, hw: int = 8) -> Path:
    d = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(1)
    for w in wnids:
        for i in range(3):
            save_img(d / "train" / w / "images" / f"{w}_{i}.JPEG", rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8))
    save_img(d / "train" / "n02" / "images" / "n02_9.JPEG", rng.integers(0, 256, (hw, hw), dtype=np.uint8))  # gray
    lines = []
    for i, w in enumerate(["n02", "n03", "n01"]):
        save_img(d / "val" / "images" / f"val_{i}.JPEG", rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8))
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t{hw}\t{hw}")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def make_fmnist(d: Path, n=(11, 5)) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for stem, k in (("train", n[0]), ("t10k", n[1])):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (k, 28, 28), dtype=np.uint8)),
                          ("labels-idx1", rng.integers(0, 10, k, dtype=np.uint8))):
            raw = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.tobytes()
            (d / f"{stem}-{kind}-ubyte.gz").write_bytes(gzip.compress(raw))
    return d


def same(a: ImageData, b: ImageData) -> None:
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.classes == b.classes
    assert a.x.dtype == b.x.dtype == torch.uint8 and a.shape == b.shape and a.name == b.name


def batches(loader: Loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


# ---- the cache holds exactly what an in-memory load decodes --------------------------------------

@pytest.mark.parametrize("kind", ["imagefolder", "imagefolder-resized", "tiny-imagenet"])
def test_cache_matches_in_memory_load(tmp_path, kind):
    kw = {}
    if kind == "tiny-imagenet":
        name, root = "tiny-imagenet", make_tiny(tmp_path / "data")
    else:
        name, root = "imagefolder", make_folder(tmp_path / "data")
        if kind == "imagefolder-resized":
            kw = {"size": 4, "channels": 1}
    for split in ("train", "test"):
        ram = load_dataset(name, split, root, **kw)
        m = dc.open_cached(name, split, root, out=tmp_path / "c", **kw)
        assert m.mapped and not ram.mapped and m.store.path.parent == tmp_path / "c"
        same(m, ram)
        assert m.location == ram.location
        assert torch.equal(m.float_x(), ram.float_x())
        assert m.x is m.x  # the mapped tensor itself, not a copy per access
        assert "mapped from" in repr(m) and "in memory" in repr(ram)


def test_mapped_subset_and_split_do_not_copy_images(tmp_path):
    root = make_folder(tmp_path / "data", per_class=10)
    m = dc.open_cached("imagefolder", "train", root, out=tmp_path / "c")
    ram = load_dataset("imagefolder", "train", root)
    base_ptr = m.x.data_ptr()
    tr_m, va_m = split_train_val(m, 0.2, seed=3)
    tr_r, va_r = split_train_val(ram, 0.2, seed=3)
    for a, b in ((tr_m, tr_r), (va_m, va_r)):
        assert a.mapped and a._base is m._base and a._rows is not None  # rows into the map, no copy
        same(a, b)
    head = m.subset(slice(2, 9))
    assert head._base is m._base and m.x.data_ptr() == base_ptr
    same(head, ram.subset(slice(2, 9)))
    idx = torch.tensor([5, 0, 3])
    same(tr_m.subset(idx).subset(torch.tensor([True, False, True])), tr_r.subset(idx).subset([0, 2]))
    assert torch.equal(tr_m.take(idx), tr_r.x[idx])
    with pytest.raises(IndexError):
        m.subset(torch.tensor([len(m)]))
    # batches are read with pread: any order, repeats, runs of consecutive rows, nothing at all
    for rows in ([3, 4, 5, 6], [6, 5, 4], [0, 29, 0, 7, 8, 9, 2], [29], []):
        r = torch.tensor(rows, dtype=torch.int64)
        assert torch.equal(m.take(r), ram.x[r]) and torch.equal(m.store.read(r), ram.x[r])
    with pytest.raises(IndexError):
        m.take(torch.tensor([len(m)]))


@pytest.mark.parametrize("world,drop_last", [(1, False), (2, True), (3, False)])
def test_streamed_batches_are_bit_identical(tmp_path, world, drop_last):
    root = make_folder(tmp_path / "data", per_class=11)
    m = dc.open_cached("imagefolder", "train", root, out=tmp_path / "c")
    ram = load_dataset("imagefolder", "train", root)
    (tr_m, _), (tr_r, _) = split_train_val(m, 0.1, 7), split_train_val(ram, 0.1, 7)
    for rank in range(world):
        mk = lambda d: Loader(d, 4, shuffle=True, seed=5, augment=Augment(2, True), drop_last=drop_last,  # noqa: E731
                              rank=rank, world_size=world)
        lm, lr = mk(tr_m), mk(tr_r)
        assert not lm.pin_memory and not lr.pin_memory  # CPU device: nothing to pin
        for epoch in (0, 3):
            got, want = batches(lm, epoch), batches(lr, epoch)
            assert len(got) == len(want) == len(lm)
            for (xa, ya), (xb, yb) in zip(got, want):
                assert xa.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
    res = Loader(tr_m, 5, resident=True)  # resident: the (gathered) subset moved once
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches(res, 0), batches(Loader(tr_r, 5), 0)))


def test_pinned_copy_is_chosen_for_a_cuda_device_with_host_data(tmp_path):
    root = make_folder(tmp_path / "data", per_class=2)
    m = dc.open_cached("imagefolder", "train", root, out=tmp_path / "c")
    assert Loader(m, 2, device="cuda").pin_memory  # built, not iterated: no GPU needed
    assert not Loader(m, 2, device="cpu").pin_memory
    assert not Loader(m, 2, device="cuda", pin_memory=False).pin_memory
    if torch.cuda.is_available():
        for (x, y), (xr, yr) in zip(Loader(m, 2, device="cuda"), Loader(m, 2)):
            assert x.is_cuda and torch.equal(x.cpu(), xr) and torch.equal(y.cpu(), yr)


# ---- built once, atomically; stale when the source changes ----------------------------------------

def test_build_once_then_reuse_and_rebuild_when_stale(tmp_path, capsys):
    root = make_folder(tmp_path / "data", per_class=3)
    path, built = dc.build_cache("imagefolder", "train", root, tmp_path / "c")
    assert built and path.is_file() and "caching imagefolder train" in capsys.readouterr().err
    assert dc.build_cache("imagefolder", "train", root, tmp_path / "c") == (path, False)
    assert dc.build_cache("imagefolder", "train", root, tmp_path / "c", force=True) == (path, True)
    header = dc.read_header(path)
    assert header["n"] == 9 and header["shape"] == [3, 6, 5] and header["classes"] == ["cat", "dog", "emu"]
    # one training image rewritten: the fingerprint changes, the next open rebuilds with the new pixels
    new = np.full((6, 5, 3), 7, dtype=np.uint8)
    target = root / "train" / "dog" / "001.png"
    save_img(target, new)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    m = dc.open_cached("imagefolder", "train", root, out=tmp_path / "c")
    assert torch.equal(m.x[4], torch.from_numpy(new).permute(2, 0, 1))
    same(m, load_dataset("imagefolder", "train", root))
    # other options, other file
    assert dc.cache_path("imagefolder", "train", root, tmp_path / "c", size=4) != path
    with pytest.raises(DarhtError, match="no usable cache"):
        dc.open_cached("imagefolder", "test", root, out=tmp_path / "c", build=False)


def test_failed_build_leaves_nothing_and_a_torn_file_is_rebuilt(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "c"
    monkeypatch.setattr(dc, "CHUNK_IMAGES", 2)
    import darht.data.imagefolder as imf

    real, calls = imf.decode_into, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise DarhtError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(imf, "decode_into", failing)
    with pytest.raises(DarhtError, match="disk on fire"):
        dc.build_cache("imagefolder", "train", root, out)
    path = dc.cache_path("imagefolder", "train", root, out)
    assert not path.exists() and not list(out.glob("*.tmp.*"))  # nothing half-written
    monkeypatch.setattr(imf, "decode_into", real)
    # a killed build's leftover tmp file is ignored and removed; a torn (truncated) cache is rebuilt
    (out / (path.name + ".tmp.999999")).write_bytes(b"DARHTU8\n partial")
    dc.build_cache("imagefolder", "train", root, out)
    assert not list(out.glob("*.tmp.*"))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(DarhtError, match="truncated"):
        dc.read_header(path)
    same(dc.open_cached("imagefolder", "train", root, out=out), load_dataset("imagefolder", "train", root))
    path.write_bytes(b"something else entirely")
    with pytest.raises(DarhtError, match="not a darht cache"):
        dc.map_cache(path)


def test_killed_build_never_leaves_a_cache(tmp_path):
    """SIGKILL in the middle of a build: only a tmp file remains; the next build succeeds."""
    root = make_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "c"
    script = textwrap.dedent(f"""
        import time, darht.data.cache as dc, darht.data.imagefolder as imf
        dc.CHUNK_IMAGES = 1
        real = imf.decode_into
        def slow(*a, **k):
            real(*a, **k); time.sleep(0.2)
        imf.decode_into = slow
        dc.build_cache("imagefolder", "train", {str(root)!r}, {str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    path = dc.cache_path("imagefolder", "train", root, out)
    deadline = time.time() + 60
    while not list(out.glob("*.tmp.*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.glob("*.tmp.*")) and not path.exists()
    same(dc.open_cached("imagefolder", "train", root, out=out), load_dataset("imagefolder", "train", root))
    assert not list(out.glob("*.tmp.*"))


def test_in_memory_formats_stream_when_asked(tmp_path):
    d = make_fmnist(tmp_path / "fm")
    ram = load_dataset("fashion-mnist", "train", d)
    m = dc.open_dataset("fashion-mnist", "train", d, stream=True, out=tmp_path / "c")
    assert m.mapped
    same(m, ram)
    assert not dc.open_dataset("fashion-mnist", "train", d, out=tmp_path / "c").mapped  # automatic: in memory
    (d / "train-labels-idx1-ubyte.gz").touch()  # a source file changed: stale
    os.utime(d / "train-labels-idx1-ubyte.gz", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert dc._fresh(m.store.path, "fashion-mnist", "train", d, {})[1] == "its source files changed"
    syn = dc.open_dataset("synthetic", "train", stream=True, out=tmp_path / "c", n=8)  # uint8 too
    same(syn, load_dataset("synthetic", "train", n=8))
    with pytest.raises(DarhtError, match="uint8"):
        dc.open_dataset("digits", "train", stream=True, out=tmp_path / "c")  # float images


# ---- the automatic choice -------------------------------------------------------------------------

def test_automatic_choice_by_size(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", per_class=4)  # 12 images of 3x6x5 = 1080 bytes
    monkeypatch.setenv("DARHT_CACHE", str(tmp_path / "envcache"))
    assert dc.decoded_bytes("imagefolder", "train", root) == 12 * 90
    monkeypatch.setattr(dc, "available_memory", lambda: 10**9)
    stream, why = dc.choose_stream(None, "imagefolder", "train", root)
    assert not stream and "fits" in why
    assert not dc.open_dataset("imagefolder", "train", root).mapped
    monkeypatch.setattr(dc, "available_memory", lambda: 4 * 1080 - 1)  # 25% of it < 1080 bytes
    stream, why = dc.choose_stream(None, "imagefolder", "train", root)
    assert stream and "25%" in why
    m = dc.open_dataset("imagefolder", "train", root)
    assert m.mapped and m.store.path.parent == tmp_path / "envcache"
    monkeypatch.setattr(dc, "available_memory", lambda: 4 * 1080 * 3 - 1)
    assert not dc.choose_stream(None, "imagefolder", "train", root, ranks=1)[0]
    assert dc.choose_stream(None, "imagefolder", "train", root, ranks=3)[0]  # 3 copies would not fit
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert dc.ranks_here(8) == 3
    assert dc.choose_stream(False, "imagefolder", "train", root) == (False, "data.stream is false")
    assert dc.choose_stream(True, "imagefolder", "train", root)[0]
    assert not dc.choose_stream(None, "digits")[0]  # an in-memory format: never automatically
    with pytest.raises(DarhtError, match="unknown option"):
        dc.choose_stream(None, "imagefolder", "train", root, nope=1)


def test_trainer_build_data_streams_identically(tmp_path, monkeypatch):
    from darht.config import make_config
    from darht.engine.distributed import DistInfo
    from darht.engine.setup import build_data

    root = make_folder(tmp_path / "data", per_class=8)
    monkeypatch.setenv("DARHT_CACHE", str(tmp_path / "c"))
    out = []
    for stream in (True, False):
        cfg = make_config({"data": {"name": "imagefolder", "root": str(root), "stream": stream, "limit": 20,
                                    "val_fraction": 0.25}, "batch_size": 6, "out": str(tmp_path / "run")})
        train, val, loader = build_data(cfg, DistInfo(), torch.device("cpu"))
        assert train.mapped is stream and val.mapped is stream
        out.append((train, val, batches(loader, 1)))
    (tm, vm, bm), (tr, vr, br) = out
    same(tm, tr)
    same(vm, vr)
    assert len(bm) == len(br) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(bm, br))


# ---- the CLI verb ----------------------------------------------------------------------------------

def test_cli_data_cache(tmp_path, capsys):
    from darht.cli import main

    root = make_tiny(tmp_path / "data")
    out = tmp_path / "c"
    assert main(["data", "cache", "tiny-imagenet", "--root", str(root), "--out", str(out), "--split", "all"]) == 0
    text = capsys.readouterr().out
    assert "tiny-imagenet train: 10 images of 3x8x8" in text and "tiny-imagenet test: 3 images" in text
    assert "built" in text and f"DARHT_CACHE={out}" in text
    assert main(["data", "cache", "tiny-imagenet", "--root", str(root), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["data", "cache", "tiny-imagenet", "--root", str(root), "--out", str(out),
                 "--data-arg", "size=4"]) == 0
    assert "10 images of 3x4x4" in capsys.readouterr().out
    same(dc.open_cached("tiny-imagenet", "train", root, out=out, build=False, size=4),
         load_dataset("tiny-imagenet", "train", root, size=4))
    assert main(["data", "cache", "tiny-imagenet", "--root", str(root), "--data-arg", "nope=1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main(["data", "cache", "tiny-imagenet", "--root", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["data", "cache", "tiny-imagenet", "--root", str(root), "--out", str(tmp_path / "afile")]) == 2


def test_ranks_started_together_build_once(tmp_path):
    """Two processes (as two DDP ranks) open the same missing cache at once: one builds, both map it."""
    root = make_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "c"
    script = textwrap.dedent(f"""
        import sys, time, darht.data.cache as dc, darht.data.imagefolder as imf
        real = imf.decode_into
        def slow(*a, **k):
            real(*a, **k); time.sleep(0.5)  # a build long enough for the other rank to arrive
        imf.decode_into = slow
        d = dc.open_cached("imagefolder", "train", {str(root)!r}, out={str(out)!r})
        print(int(d.x.sum()), len(d))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    ram = load_dataset("imagefolder", "train", root)
    assert [r[0].split() for r in results] == [[str(int(ram.x.sum())), str(len(ram))]] * 2
    assert sum(r[1].count("caching imagefolder train") for r in results) == 1
