"""Model zoo and checkpoint io: the contract of every registered model, the RobustBench WRN-70-16
layout, timm models behind the input adapter, and safe/strict checkpoint loading."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from darht.errors import DarhtError
from darht.models import create_model, is_randomized, list_models
from darht.models.io import load_model, read_meta, save_model
from darht.models.timm_models import default_patch_size

# Small variants keep the parametrized tests fast; a model not listed here is built with defaults.
SMALL = {
    "small-cnn": {"width": 8},
    "resnet18": {"width": 8},
    "preact-resnet18": {"width": 8},
    "resnet164": {"depth": 20, "width": 4},
    "wrn-34-10": {"depth": 10, "widen_factor": 1},
    "wrn-70-16": {"depth": 10, "widen_factor": 1},
    "wrn-28-10": {"depth": 10, "widen_factor": 1},
    "wrn-34-20": {"depth": 10, "widen_factor": 1},
    "wrn-32-10": {"depth": 8, "widen_factor": 1},
    "wrn-28-10-dm": {"depth": 10, "widen_factor": 1},
    "preact-resnet18-dm": {"width": 8},
    "vit-tiny": {"depth": 1},
    "vit-small": {"depth": 1, "embed_dim": 48},
    "darht-student": {"backbone_kwargs": {"width": 8}, "num_teachers": 2},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: with other processes on the cores, intra-op thread hand-offs cost
    far more than the maths (50x measured on a busy 2-core box). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _build(name: str, chans: int = 3, size: int = 32, num_classes: int = 5) -> nn.Module:
    return create_model(name, num_classes, in_chans=chans, img_size=size, **SMALL.get(name, {}))


def _seeded(fn, *args):
    """Run fn with a fixed RNG, so randomized models (MC dropout) can be compared exactly."""
    torch.manual_seed(123)
    return fn(*args)


def _settle_bn(model: nn.Module, chans: int, size: int) -> None:
    """One train-mode forward so BatchNorm running statistics are not the trivial 0/1."""
    model.train()
    with torch.no_grad():
        model(torch.rand(4, chans, size, size))
    model.eval()


# ---- the contract, for every registered model ----------------------------------------------------
@pytest.mark.parametrize("chans,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", list_models())
def test_forward_contract(name: str, chans: int, size: int) -> None:
    model = _build(name, chans, size).eval()
    x = torch.rand(2, chans, size, size, requires_grad=True)
    y = _seeded(model, x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    feats = _seeded(model.forward_features, x)
    assert feats.shape == (2, model.num_features)
    torch.manual_seed(123)
    assert torch.equal(model.forward_head(model.forward_features(x)), y)
    # attacks need input gradients through the whole model (normalization included)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    spec = model.spec
    assert set(spec) >= {"name", "num_classes", "in_chans", "img_size", "kwargs"}
    assert (spec["name"], spec["num_classes"], spec["in_chans"], spec["img_size"]) == (name, 5, chans, size)


@pytest.mark.parametrize("name", list_models())
def test_save_load_roundtrip(name: str, tmp_path) -> None:
    model = _build(name, 3, 32)
    _settle_bn(model, 3, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        y = _seeded(model, x)
    out = save_model(model, tmp_path / "run" / "best", meta={"epoch": 3})
    assert out == tmp_path / "run" / "best.safetensors" and out.is_file()
    side = read_meta(tmp_path / "run")
    assert side["meta"] == {"epoch": 3} and side["spec"]["name"] == name

    loaded = load_model(tmp_path / "run")  # a run directory: best.safetensors
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(_seeded(loaded, x), y)
    ref = model.state_dict()
    got = loaded.state_dict()
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)

    # the JSON spec alone rebuilds the same architecture
    spec = json.loads(json.dumps(model.spec))
    rebuilt = create_model(**spec).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in ref.items()}


def test_small_cnn_any_size_down_to_8px() -> None:
    for size in (8, 13, 64):
        assert _build("small-cnn", 3, size)(torch.rand(2, 3, size, size)).shape == (2, 5)
    with pytest.raises(DarhtError, match="img_size >= 8"):
        _build("small-cnn", 3, 6)
    n = sum(p.numel() for p in create_model("small-cnn", 10).parameters())
    assert 100_000 <= n <= 500_000


def test_normalization_is_inside_the_model() -> None:
    mean, std = [0.2, 0.4, 0.6], [0.5, 0.25, 0.2]
    torch.manual_seed(0)
    normed = create_model("small-cnn", 4, mean=mean, std=std).eval()
    plain = create_model("small-cnn", 4).eval()
    plain.load_state_dict({k: v for k, v in normed.state_dict().items() if k not in ("mean", "std")},
                          strict=False)
    assert torch.equal(plain.mean.flatten(), torch.zeros(3)) and torch.equal(plain.std.flatten(), torch.ones(3))
    x = torch.rand(3, 3, 32, 32)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normed(x), plain(manual), atol=1e-6)
    with pytest.raises(DarhtError, match="input channels"):
        create_model("small-cnn", 4, in_chans=1, mean=mean)
    with pytest.raises(DarhtError, match="std must be > 0"):
        create_model("small-cnn", 4, std=0.0)


def test_known_parameter_counts_on_meta_device() -> None:
    """Published sizes (CIFAR-10 heads) pin the architectures; meta device: no memory, no init."""
    expected = {"resnet18": 11_173_962, "wrn-34-10": 46_160_474, "resnet164": 1_703_258}
    with torch.device("meta"):
        for name, n in expected.items():
            assert sum(p.numel() for p in create_model(name, 10).parameters()) == n, name


def test_vit_patch_size_fits_image() -> None:
    assert [default_patch_size(s) for s in (8, 28, 32, 64, 224, 30)] == [2, 4, 4, 8, 16, 3]
    vit = create_model("vit-tiny", 3, in_chans=1, img_size=8, depth=1)
    assert vit.model.patch_embed.proj.kernel_size == (2, 2) and vit.model.patch_embed.proj.in_channels == 1
    assert vit.num_features == 192
    with pytest.raises(DarhtError, match="does not divide"):
        create_model("vit-tiny", 3, img_size=32, patch_size=5, depth=1)


# ---- RobustBench / DeepMind WRN-70-16 layout --------------------------------------------------------
def _rb_wrn_shapes(depth: int, width: int, num_classes: int = 10, chans: int = 3) -> dict[str, tuple]:
    """Key -> shape of RobustBench's DMWideResNet state dict (from its published layout)."""
    n = (depth - 4) // 6
    c = [16, 16 * width, 32 * width, 64 * width]
    shapes: dict[str, tuple] = {"mean": (chans, 1, 1), "std": (chans, 1, 1), "init_conv.weight": (c[0], chans, 3, 3)}

    def bn(prefix: str, ch: int) -> None:
        for s in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{s}"] = (ch,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    for g in range(3):
        for i in range(n):
            cin, cout = (c[g] if i == 0 else c[g + 1]), c[g + 1]
            p = f"layer.{g}.block.{i}"
            bn(f"{p}.batchnorm_0", cin)
            shapes[f"{p}.conv_0.weight"] = (cout, cin, 3, 3)
            bn(f"{p}.batchnorm_1", cout)
            shapes[f"{p}.conv_1.weight"] = (cout, cout, 3, 3)
            if cin != cout:
                shapes[f"{p}.shortcut.weight"] = (cout, cin, 1, 1)
    bn("batchnorm", c[3])
    shapes["logits.weight"] = (num_classes, c[3])
    shapes["logits.bias"] = (num_classes,)
    return shapes


def test_wrn70_16_has_the_exact_robustbench_layout() -> None:
    with torch.device("meta"):
        model = create_model("wrn-70-16", 10)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _rb_wrn_shapes(70, 16)
    assert "layer.0.block.0.batchnorm_0.weight" in got and "layer.2.block.10.conv_1.weight" in got
    assert any(isinstance(m, nn.SiLU) for m in model.modules())  # Swish activations


def _random_rb_state(depth: int, width: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    state = {}
    for k, shape in _rb_wrn_shapes(depth, width).items():
        if k.endswith("num_batches_tracked"):
            continue  # converted (JAX) checkpoints may lack it: must still load
        if k.endswith("running_var") or k == "std":
            t = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith(("bn.weight", "_0.weight", "_1.weight", "batchnorm.weight")) and len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            t = torch.randn(shape, generator=g) * math.sqrt(1.0 / math.prod(shape[1:]))
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        state[k] = t
    state["mean"] = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    return state


def _reference_dm_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """DeepMind WRN forward written from its description: pre-activation blocks, Swish, 'SAME'
    padding (right/bottom only at stride 2), projection on the activated input, 8x8 avg pool."""

    def bn(p: str, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], training=False, eps=1e-5)

    out = F.conv2d((x - sd["mean"]) / sd["std"], sd["init_conv.weight"], padding=1)
    for g in range(3):
        for i in range(n):
            p = f"layer.{g}.block.{i}"
            stride = 2 if g > 0 and i == 0 else 1
            a = F.silu(bn(f"{p}.batchnorm_0", out))
            h = F.conv2d(F.pad(a, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)), sd[f"{p}.conv_0.weight"],
                         stride=stride)
            h = F.conv2d(F.silu(bn(f"{p}.batchnorm_1", h)), sd[f"{p}.conv_1.weight"], padding=1)
            skip = F.conv2d(a, sd[f"{p}.shortcut.weight"], stride=stride) if f"{p}.shortcut.weight" in sd else out
            out = h + skip
    out = F.avg_pool2d(F.silu(bn("batchnorm", out)), 8).flatten(1)
    return F.linear(out, sd["logits.weight"], sd["logits.bias"])


def test_robustbench_wrn_checkpoint_loads_and_computes_the_same(tmp_path) -> None:
    depth, width = 16, 2  # 2 blocks per group: both shortcut kinds, both paddings
    state = _random_rb_state(depth, width)
    path = tmp_path / "Gowal2020Uncovering_70_16.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # DataParallel-saved
    model = load_model(path, name="wrn-70-16", kwargs={"depth": depth, "widen_factor": width})
    assert model.spec["num_classes"] == 10  # read from logits.weight
    assert torch.equal(model.mean, state["mean"]) and torch.equal(model.std, state["std"])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = _reference_dm_forward(state, x, (depth - 4) // 6)
        assert torch.allclose(model(x), ref, rtol=1e-4, atol=1e-5)
        # symmetric padding before the stride-2 conv gives other numbers: the check can tell
        for group in (model.layer[1], model.layer[2]):
            group.block[0].stride = 1  # only the hand-made padding reads it; the conv keeps stride 2
        assert not torch.allclose(model(x), ref, rtol=1e-3, atol=1e-4)
    with pytest.raises(DarhtError, match="does not fit"):
        load_model(path, name="wrn-70-16", kwargs={"depth": 10, "widen_factor": width})


def test_trades_style_wrn_checkpoint_without_normalization_loads(tmp_path) -> None:
    src = _build("wrn-34-10")
    _settle_bn(src, 3, 32)
    keys = set(src.state_dict())
    assert {"conv1.weight", "block2.layer.0.convShortcut.weight", "block3.layer.0.bn2.weight", "fc.weight"} <= keys
    path = tmp_path / "trades.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in src.state_dict().items()
                                     if k not in ("mean", "std")}}, path)
    got = load_model(path, name="wrn-34-10", kwargs=SMALL["wrn-34-10"])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(got(x), src(x))


# ---- timm models behind the input adapter ---------------------------------------------------------
def test_timm_model_resized_repeated_normalized(tmp_path) -> None:
    model = create_model("timm:resnet10t", 5, in_chans=1, img_size=28).eval()
    cfg = model.model.pretrained_cfg
    assert model.input_size == tuple(cfg["input_size"][1:])
    x = torch.rand(2, 1, 28, 28)
    manual = F.interpolate(x, size=model.input_size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    manual = (manual - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        y = model(x)
        assert torch.allclose(y, model.model(manual), atol=1e-5)  # timm's own forward on the manual input
        assert torch.equal(model.forward_head(model.forward_features(x)), y)
    assert model.num_features == 512 and model.spec["name"] == "timm:resnet10t"
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


def test_timm_vit_at_224_from_32px() -> None:
    model = create_model("timm:vit_tiny_patch16_224", 3, in_chans=3, img_size=32).eval()
    assert model.input_size == (224, 224)
    with torch.no_grad():
        f = model.forward_features(torch.rand(2, 3, 32, 32))
        assert f.shape == (2, 192) and model.forward_head(f).shape == (2, 3)


def test_timm_errors_and_local_pretrained_file(tmp_path) -> None:
    with pytest.raises(DarhtError, match="unknown timm model"):
        create_model("timm:no_such_net_xyz", 3)
    with pytest.raises(DarhtError, match="never downloaded"):
        create_model("timm:resnet10t", 3, pretrained=True)
    import timm

    imagenet = timm.create_model("resnet10t", pretrained=False, num_classes=1000)  # stands in for a local file
    path = tmp_path / "resnet10t.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_model("timm:resnet10t", 4, pretrained_file=str(path))
    assert "pretrained_file" not in model.spec["kwargs"]
    assert torch.equal(model.model.conv1[0].weight, imagenet.conv1[0].weight)
    assert model.model.fc.weight.shape == (4, 512)  # new head for 4 classes, left freshly initialised


# ---- checkpoint io: safety and errors -------------------------------------------------------------
RAN: list[int] = []


def _payload() -> None:
    RAN.append(1)


class _CodeRunner:
    def __reduce__(self):
        return (_payload, ())


def test_unsafe_pickle_is_refused_without_running_code(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "x": _CodeRunner()}, path)
    RAN.clear()
    with pytest.raises(DarhtError, match="refuses to unpickle code"):
        load_model(path, name="small-cnn", num_classes=2)
    assert RAN == []
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load would run it
    assert RAN == [1]


def test_load_errors(tmp_path) -> None:
    with pytest.raises(DarhtError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(DarhtError, match="no model in directory"):
        load_model(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x07not a safetensors file at all")
    with pytest.raises(DarhtError, match="not a valid safetensors"):
        load_model(tmp_path / "junk.safetensors", name="small-cnn", num_classes=2)
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DarhtError, match="corrupt"):
        load_model(tmp_path / "junk.pt", name="small-cnn", num_classes=2)
    sd = create_model("small-cnn", 3, width=8).state_dict()
    torch.save(sd, tmp_path / "cnn.pt")
    with pytest.raises(DarhtError, match="pass the model name"):
        load_model(tmp_path / "cnn.pt")
    with pytest.raises(DarhtError, match=r"does not fit model 'resnet18': missing keys: .*unexpected keys"):
        load_model(tmp_path / "cnn.pt", name="resnet18", kwargs={"width": 8})
    with pytest.raises(DarhtError, match="shape mismatch"):
        load_model(tmp_path / "cnn.pt", name="small-cnn", kwargs={"width": 16})
    assert load_model(tmp_path / "cnn.pt", name="small-cnn", kwargs={"width": 8}).spec["num_classes"] == 3
    with pytest.raises(DarhtError, match="unknown model"):
        create_model("no-such-model", 3)
    with pytest.raises(DarhtError, match="model 'small-cnn'"):
        create_model("small-cnn", 3, depth=3)
    with pytest.raises(DarhtError, match="depth must be 6n"):
        create_model("wrn-34-10", 3, depth=33)


def test_run_directory_prefers_best_then_last(tmp_path) -> None:
    torch.manual_seed(1)
    last = create_model("small-cnn", 3, width=8)
    torch.manual_seed(2)
    best = create_model("small-cnn", 3, width=8)
    save_model(last, tmp_path / "last")
    save_model(best, tmp_path / "best")
    assert torch.equal(load_model(tmp_path).fc.weight, best.fc.weight)
    (tmp_path / "best.safetensors").unlink()
    assert torch.equal(load_model(tmp_path).fc.weight, last.fc.weight)


def test_spec_inside_a_torch_checkpoint_and_sidecar_fallback(tmp_path) -> None:
    model = create_model("resnet18", 7, in_chans=1, img_size=28, width=8).eval()
    torch.save({"model": model.state_dict(), "spec": model.spec, "optimizer": {}}, tmp_path / "ckpt.pt")
    got = load_model(tmp_path / "ckpt.pt")
    assert got.spec == model.spec
    save_model(model, tmp_path / "m")
    (tmp_path / "m.json").unlink()  # the safetensors header carries the same sidecar
    assert read_meta(tmp_path / "m")["spec"] == model.spec
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m").eval()(x), model(x))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # tied: safetensors refuses shared memory unless handled
        self.spec = {"name": "tied", "num_classes": 4, "in_chans": 1, "img_size": 2, "kwargs": {}}


def test_shared_tensors_and_randomized_flag(tmp_path) -> None:
    path = save_model(_Tied(), tmp_path / "tied")
    tensors = load_file(str(path))
    assert torch.equal(tensors["a.weight"], tensors["b.weight"])
    assert not is_randomized(create_model("small-cnn", 3))
    net = create_model("small-cnn", 3)
    net.stage2.randomized = True  # any submodule may declare itself randomized
    assert is_randomized(net)
