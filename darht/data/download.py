"""`darht data download NAME`: fetch a data set, verify its checksum, extract it safely, install it.
`darht data fetch-teacher NAME --url URL`: fetch a RobustBench teacher's weights (`fetch_teacher`).

Everything happens in a temporary directory beside the target; the finished directory is renamed
into place, so an interrupted download never leaves a half-installed data set that later loads.
Archives are checked member by member before anything is written: absolute paths, '..', links
leaving the target and device files are refused (a crafted archive cannot write outside it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from darht.data.base import default_dirs
from darht.errors import DarhtError

CHUNK = 1 << 20


@dataclass(frozen=True)
class _Source:
    folder: str                              # what the loader looks for under root
    files: tuple[tuple[str, str, str], ...]  # (url, algorithm, hex digest)
    archive: bool = True                     # one archive to extract, or plain files to keep


_FMNIST = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
SOURCES: dict[str, _Source] = {
    "cifar10": _Source("cifar-10-batches-py", (
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "md5", "c58f30108f718f92721af3b95e74349a"),)),
    "cifar100": _Source("cifar-100-python", (
        ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "md5", "eb9058c3a382ffc7106e4002c42a8d85"),)),
    "tiny-imagenet": _Source("tiny-imagenet-200", (
        ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "md5", "90528d7ca1a48142e341f4ef8d21d0de"),)),
    "fashion-mnist": _Source("fashion-mnist", (
        (_FMNIST + "train-images-idx3-ubyte.gz", "md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        (_FMNIST + "train-labels-idx1-ubyte.gz", "md5", "25c81989df183df01b3e8a0aad5dffbe"),
        (_FMNIST + "t10k-images-idx3-ubyte.gz", "md5", "bef4ecab320f06d8554ea6380940ec79"),
        (_FMNIST + "t10k-labels-idx1-ubyte.gz", "md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    ), archive=False),
}


def download(name: str, root: str | Path | None = None, url: str | None = None,
             sha256: str | None = None) -> Path:
    """Install data set `name` under `root` (default $DARHT_DATA/NAME or ~/.cache/darht/NAME) and
    return its directory, which `load_dataset(name, root=root)` finds.

    `url` replaces the official address (a mirror, or file:// for a local copy); for
    fashion-mnist it is the directory holding the four files. The official checksums apply only
    to the official addresses; `sha256` checks the downloaded file instead. With neither, the
    computed sha256 is printed so the user can pin it.
    """
    if name not in SOURCES:
        raise DarhtError(f"no download for '{name}'; choose from: {', '.join(sorted(SOURCES))}")
    src = SOURCES[name]
    if sha256 is not None and not src.archive:
        raise DarhtError(f"{name} is {len(src.files)} files with known checksums; --sha256 applies to one archive")
    root = Path(root).expanduser() if root is not None else default_dirs(name)[0]
    target = root / src.folder
    if target.exists():
        print(f"darht: {name} already present in {target}", file=sys.stderr)
        return target
    created = [d for d in (root, *root.parents) if not d.exists()]  # removed again if this fails
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{src.folder}.download-"))
    ok = False
    try:
        if src.archive:
            u, algo, digest = src.files[0]
            expected = ("sha256", sha256) if sha256 else (None if url else (algo, digest))
            archive = fetch(url or u, tmp / _filename(url or u), expected)
            out = tmp / "extracted"
            safe_extract(archive, out)
            entries = [p for p in out.iterdir()]
            # the archive's folder, else its single top directory, else its contents as a whole
            top = out / src.folder if (out / src.folder).is_dir() else \
                entries[0] if len(entries) == 1 and entries[0].is_dir() else out
            os.rename(top, target)
        else:
            staged = tmp / src.folder
            staged.mkdir()
            for u, algo, digest in src.files:
                fname = _filename(u)
                src_url = urllib.parse.urljoin(url.rstrip("/") + "/", fname) if url else u
                fetch(src_url, staged / fname, None if url else (algo, digest))
            os.rename(staged, target)
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok:
            remove_empty(created)
    print(f"darht: installed {name} in {target}", file=sys.stderr)
    return target


def remove_empty(created: list[Path]) -> None:
    """Remove the directories a failed call created (innermost first), while they are empty."""
    for d in created:
        try:
            d.rmdir()
        except OSError:
            break


def teacher_path(name: str, dataset: str) -> Path:
    """Where `fetch_teacher` puts a RobustBench checkpoint by default:
    $DARHT_TEACHERS/DATASET/NAME.pt, else ~/.cache/darht/teachers/DATASET/NAME.pt."""
    base = Path(os.environ["DARHT_TEACHERS"]) if os.environ.get("DARHT_TEACHERS") else \
        Path.home() / ".cache" / "darht" / "teachers"
    return base.expanduser() / dataset / f"{name}.pt"


def fetch_teacher(name: str, url: str, out: str | Path | None = None, sha256: str | None = None,
                  dataset: str | None = None) -> Path:
    """Download the weights of RobustBench model `name` from `url` (RobustBench hosts them on
    Google Drive: pass a direct link, a mirror, or file://), check them against the table's key
    layout (on the meta device: no memory) and move them into place atomically; returns the path,
    which `--teacher NAME=PATH` loads. An existing file is kept as it is."""
    from darht.models import robustbench  # torch and the model zoo: only when this runs

    entry = robustbench.lookup(name, dataset=dataset)
    dest = Path(out).expanduser() if out is not None else teacher_path(entry.name, entry.dataset)
    if dest.suffix not in (".pt", ".pth", ".ckpt", ".bin"):
        raise DarhtError(f"--out {dest}: a teacher checkpoint is a .pt/.pth file")
    if dest.exists():
        print(f"darht: {dest} already present (remove it to fetch again)", file=sys.stderr)
        return dest
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.stem}.download-", suffix=dest.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    ok = False
    try:
        fetch(url, tmp, ("sha256", sha256) if sha256 else None)
        state = robustbench.read_checkpoint(entry, tmp)
        robustbench.check_keys(entry, state, where=f"{url}")
        os.replace(tmp, dest)
        ok = True
    finally:
        tmp.unlink(missing_ok=True)
        if not ok:
            remove_empty(created)
    print(f"darht: {entry.dataset} {entry.name} ({entry.arch}) saved to {dest}", file=sys.stderr)
    return dest


def _filename(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name or "download"


def fetch(url: str, dest: Path, expected: tuple[str, str] | None) -> Path:
    """Stream `url` to `dest`; verify `expected` = (algorithm, hex digest) or print the sha256."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "ftp", "file"):
        raise DarhtError(f"{url}: unsupported URL scheme '{scheme}'")
    hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
    print(f"darht: downloading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            while chunk := r.read(CHUNK):
                f.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
    except (urllib.error.URLError, OSError) as e:
        dest.unlink(missing_ok=True)
        raise DarhtError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    if expected is None:
        print(f"darht: {url}: no checksum to verify; sha256 {hashes['sha256'].hexdigest()} "
              f"(pass --sha256 to pin it)", file=sys.stderr)
        return dest
    algo, want = expected
    if algo not in hashes:
        raise DarhtError(f"unknown checksum algorithm '{algo}'")
    got = hashes[algo].hexdigest()
    if got.lower() != want.strip().lower():
        dest.unlink(missing_ok=True)
        raise DarhtError(f"{url}: {algo} mismatch: expected {want}, got {got} (download removed)")
    return dest


# ---- safe extraction ----------------------------------------------------------------------------

def _check_relative(name: str, archive: Path, what: str = "member") -> None:
    """Refuse absolute names and any '..' component: the path must stay below the target."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise DarhtError(f"{archive}: refusing {what} '{name}' (it points outside the target directory)")


def _check_tar_member(m: tarfile.TarInfo, archive: Path) -> None:
    _check_relative(m.name, archive)
    if m.issym() or m.islnk():
        # a link target without '..' or a leading '/' cannot resolve above the directory holding
        # it, however links chain, so every path stays inside the target
        _check_relative(m.linkname, archive, f"link '{m.name}' ->")
    elif not (m.isfile() or m.isdir()):
        raise DarhtError(f"{archive}: refusing special file '{m.name}' (device, fifo, ...)")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar(.gz/.bz2/.xz) or zip archive into `dest`, refusing members that would land
    outside it (all members are checked before anything is written)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_relative(info.filename, archive)
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                for m in members:
                    _check_tar_member(m, archive)
                if hasattr(tarfile, "data_filter"):  # python's own check, on the real filesystem
                    tf.extractall(dest, members=members, filter="data")
                else:  # pragma: no cover - python < 3.11.4
                    tf.extractall(dest, members=members)
        else:
            raise DarhtError(f"{archive}: not a tar or zip archive")
    except DarhtError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DarhtError(f"{archive}: cannot extract ({e.__class__.__name__}: {e})") from None
