"""The command line: bad input gives one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

from darht.cli import main


def _write_idx(path, arr: np.ndarray, truncate: int = 0) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if truncate:
        raw = raw[:-truncate]
    with gzip.open(path, "wb") as f:
        f.write(raw)


def _fmnist_dir(tmp_path, n_train=6, n_test=4, labels_train=None, truncate_images=0, corrupt_gzip=False):
    d = tmp_path / "fmnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)), truncate=truncate_images)
    _write_idx(d / "train-labels-idx1-ubyte.gz", labels_train if labels_train is not None else np.arange(n_train) % 10)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    if corrupt_gzip:
        (d / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip at all")
    return d


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("darht: error: ")
    assert "Traceback" not in err[0]
    return err[0]


def test_data_info_reads_a_good_directory(tmp_path, capsys):
    d = _fmnist_dir(tmp_path)
    assert main(["data", "info", "fashion-mnist", "--root", str(d)]) == 0
    out = capsys.readouterr().out
    assert "28" in out and "10" in out


@pytest.mark.parametrize("case", ["truncated", "corrupt", "missing", "label_count"])
def test_bad_data_gives_one_line_and_exit_2(tmp_path, capsys, case):
    if case == "truncated":
        d = _fmnist_dir(tmp_path, truncate_images=100)
    elif case == "corrupt":
        d = _fmnist_dir(tmp_path, corrupt_gzip=True)
    elif case == "missing":
        d = tmp_path / "does-not-exist"
    else:
        d = _fmnist_dir(tmp_path, labels_train=np.arange(5) % 10)  # 6 images, 5 labels
    assert main(["data", "info", "fashion-mnist", "--root", str(d)]) == 2
    _error_line(capsys)


@pytest.mark.parametrize("argv, words", [
    (["train", "--data", "synthetic", "--method", "no-such-method", "--epochs", "1", "--no-progress"], "unknown method"),
    (["train", "--data", "synthetic", "--set", "eval.eps=-0.1", "--no-progress"], "eps"),
    (["train", "--data", "synthetic", "--set", "optim.no_such_key=1", "--no-progress"], "unknown key"),
    (["evaluate", "--checkpoint", "/nonexistent/model.safetensors", "--data", "synthetic"], "not found"),
    (["evaluate", "--model", "small-cnn", "--data", "synthetic", "--attacks", "no-such-attack", "--no-progress"],
     "unknown attack"),
    (["compare", "/nonexistent/a.json", "/nonexistent/b.json"], "not found"),
    (["report", "/nonexistent/run"], "not found"),
    (["run", "/nonexistent/config.yaml"], "not found"),
])
def test_bad_input_gives_one_line_and_exit_2(argv, words, capsys, tmp_path):
    assert main(argv + ([] if argv[0] in ("compare", "report", "run", "evaluate") else ["--out", str(tmp_path / "r")])) == 2
    assert words in _error_line(capsys)


def test_config_type_errors_are_clear(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: ten\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "epochs" in _error_line(capsys)
    cfg.write_text("epochs: [1, 2\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "YAML" in _error_line(capsys)


def test_bad_flag_value_exits_2_via_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--eps", "-8/255"])
    assert e.value.code == 2


def test_console_entry_point_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "darht", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("darht ")
