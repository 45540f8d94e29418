"""Typed configuration, checked once: every bad value is one DarhtError line naming its key, from a
YAML file and from `--set` alike; method and attack arguments are checked without building anything."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from darht.attacks import PAPER_DEFAULTS
from darht.attacks.args import attack_arg_types, check_attack_args, check_attack_args_map
from darht.config import EvalConfig, OptimConfig, TrainConfig, _build, load_yaml, make_config, to_dict
from darht.errors import DarhtError
from darht.constraints import CONSTRAINTS, at_least
from darht.evaluation.spec import EvalSpec
from darht.methods.args import ArgError, accepted_args, arg, arg_defaults, check_method_args
from darht.pipeline import Pipeline, PipelineConfig, load_pipeline
from darht.registry import ATTACKS, METHODS

CONFIGS = sorted(str(p) for p in Path(__file__).resolve().parent.parent.joinpath("configs").rglob("*.yaml"))


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


def nested_yaml(key: str, value: str) -> str:
    """'optim.lr', '-1' -> 'optim:\\n  lr: -1\\n'."""
    parts = key.split(".")
    return "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts[:-1])) + f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}\n"


# (dotted key, the value as YAML text, words the message must contain)
BAD = [
    ("data.augment", "[1]", "data.augment must be true or false"),
    ("data.augment", "1", "data.augment"),
    ("optim.nesterov", "maybe", "optim.nesterov"),
    ("optim.milestones", "[a, b]", "optim.milestones[0] must be a number, got 'a'"),
    ("optim.milestones", "[0.5, -1]", "optim.milestones[1] must be > 0"),
    ("optim.milestones", "0.5", "optim.milestones must be a list"),
    ("data.limit", "-5", "data.limit must be >= 1, got -5"),
    ("data.limit", "0", "data.limit"),
    ("data.val_fraction", "1", "data.val_fraction must be in [0, 1)"),
    ("data.padding", "-1", "data.padding"),
    ("data.name", "[a]", "data.name must be a string"),
    ("data.kwargs", "[1]", "data.kwargs must be a mapping"),
    ("optim.lr", "-1", "optim.lr must be > 0, got -1"),
    ("optim.lr", "0", "optim.lr"),
    ("optim.lr", "fast", "optim.lr must be a number, got 'fast'"),
    ("optim.lr", ".nan", "optim.lr"),
    ("optim.momentum", "1.0", "optim.momentum must be in [0, 1)"),
    ("optim.weight_decay", "-2e-4", "optim.weight_decay"),
    ("optim.gamma", "0", "optim.gamma must be > 0"),
    ("optim.warmup_epochs", "-1", "optim.warmup_epochs"),
    ("optim.grad_clip", "0", "optim.grad_clip must be > 0"),
    ("optim.schedule", "linear", "optim.schedule must be one of multistep, cosine, warmup-multistep, constant, original"),
    ("eval.n", "-1", "eval.n must be >= 1"),
    ("eval.steps", "-1", "eval.steps must be >= 0"),
    ("eval.every", "0", "eval.every"),
    ("eval.eot", "0", "eval.eot"),
    ("eval.draws", "0", "eval.draws"),
    ("eval.eps", "1.5", "eval.eps must be in [0, 1]"),
    ("eval.eps", "-0.1", "eval.eps"),
    ("amp", "fp8", "amp must be one of none, bf16, fp16; got 'fp8'"),
    ("cpu_malloc", "jemalloc", "cpu_malloc must be one of retain, system; got 'jemalloc'"),
    ("epochs", "2.5", "epochs must be an integer, got 2.5"),
    ("epochs", "ten", "epochs must be an integer, got 'ten'"),
    ("epochs", "0", "epochs must be >= 1"),
    ("batch_size", "true", "batch_size must be an integer, got True"),
    ("batch_size", "0", "batch_size"),
    ("workers", "-1", "workers"),
    ("seed", "abc", "seed must be an integer"),
    ("method", "null", "method may not be null"),
    ("device", "[cpu]", "device must be a string"),
    ("teachers", "3", "teachers must be a list or a mapping"),
    ("teachers", "{a: [1]}", "teachers.a must be a string"),
    ("data", "3", "data must be a mapping"),
    ("optim", "[1, 2]", "optim must be a mapping"),
    ("method_args", "{eps: 2}", "method_args.eps must be in [0, 1], got 2"),
    ("method_args", "{eps: -8/255}", "method_args.eps"),
    ("method_args", "[1]", "method_args must be a mapping"),
    ("optim.bogus", "1", "unknown key 'bogus' in 'optim'"),
    ("bogus", "1", "unknown key 'bogus'"),
]


@pytest.mark.parametrize("key, value, words", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_values_are_one_line_naming_the_key_from_yaml(tmp_path, key, value, words):
    path = tmp_path / "c.yaml"
    path.write_text(nested_yaml(key, value))
    with pytest.raises(DarhtError) as e:
        make_config(load_yaml(path))
    assert words in one_line(e)


@pytest.mark.parametrize("key, value, words", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_values_are_one_line_naming_the_key_from_set(key, value, words):
    with pytest.raises(DarhtError) as e:
        make_config({}, [f"{key}={value}"])
    assert words in one_line(e)


def test_cli_prints_the_config_error_and_exits_2(tmp_path, capsys):
    from darht.cli import main

    argv = ["train", "--data", "synthetic", "--set", "optim.milestones=[a, b]", "--out", str(tmp_path / "r"),
            "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["darht: error: config: optim.milestones[0] must be a number, got 'a'"]
    assert not (tmp_path / "r").exists()  # refused before anything ran


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_yaml_is_an_error(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(DarhtError) as e:
        load_yaml(path)
    assert one_line(e) == f"config {path} is empty"


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "3\n"])
def test_yaml_whose_top_level_is_not_a_mapping_names_the_file(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(DarhtError) as e:
        load_yaml(path)
    msg = one_line(e)
    assert str(path) in msg and "mapping" in msg


def test_missing_and_broken_yaml(tmp_path):
    with pytest.raises(DarhtError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("epochs: [1, 2\n")
    with pytest.raises(DarhtError) as e:
        load_yaml(path)
    assert "not valid YAML" in one_line(e)


def test_make_config_refuses_a_non_mapping_top_level():
    with pytest.raises(DarhtError) as e:
        make_config([1, 2])
    assert "top level" in one_line(e)


# ---- good configs -----------------------------------------------------------------------------
def test_defaults_are_unchanged():
    cfg = make_config({})
    assert cfg == TrainConfig()
    assert (cfg.amp, cfg.optim.schedule, cfg.optim.milestones, cfg.epochs, cfg.batch_size) == \
        ("none", "multistep", [0.5, 0.75], 10, 128)
    assert make_config(to_dict(cfg)) == cfg  # the dumped config loads back as itself


def test_values_are_converted_to_the_field_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: '3'\n"
                    "optim: {lr: 1, weight_decay: 5e-4, milestones: [60, 80], grad_clip: null, schedule: cosine}\n"
                    "eval: {eps: 8/255, eot: null}\n"
                    "data: {augment: no, limit: 100.0, val_fraction: 0}\n"
                    "amp: bf16\n"
                    "method_args: {eps: 8/255, steps: 3, tau_schedule: [[1, 0]]}\n")
    cfg = make_config(load_yaml(path))
    assert cfg.epochs == 3 and type(cfg.epochs) is int
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.optim.weight_decay == pytest.approx(5e-4)  # YAML 1.1 reads 5e-4 as a string
    assert cfg.optim.milestones == [60.0, 80.0] and all(type(m) is float for m in cfg.optim.milestones)
    assert cfg.eval.eps == pytest.approx(8 / 255)
    assert cfg.data.augment is False and cfg.data.limit == 100 and type(cfg.data.limit) is int
    assert cfg.amp == "bf16" and cfg.optim.schedule == "cosine"
    assert cfg.method_args == {"eps": "8/255", "steps": 3, "tau_schedule": [[1, 0]]}  # the method reads them


@pytest.mark.parametrize("text, want", [("true", True), ("False", False), ("yes", True), ("no", False)])
def test_bool_strings_from_python_callers(text, want):
    assert make_config({"data": {"augment": text}}).data.augment is want


def test_overrides_apply_in_order_into_empty_sections_and_leave_raw_alone():
    raw = {"optim": {"lr": 0.1}, "data": None}
    cfg = make_config(raw, ["optim.lr=0.05", "optim.lr=0.2", "data.limit=4", "optim.milestones=[]"])
    assert cfg.optim.lr == 0.2 and cfg.data.limit == 4 and cfg.optim.milestones == []
    assert raw == {"optim": {"lr": 0.1}, "data": None}


def test_null_section_means_its_defaults():
    assert make_config({"data": None, "eval": None}).eval == EvalConfig()


def test_literal_fields_and_constraints_table():
    from typing import Literal, get_args, get_origin, get_type_hints

    amp = get_type_hints(TrainConfig)["amp"]
    sched = get_type_hints(OptimConfig)["schedule"]
    assert get_origin(amp) is Literal and set(get_args(amp)) == {"none", "bf16", "fp16"}
    assert get_origin(sched) is Literal and "original" in get_args(sched)
    for key in CONSTRAINTS:  # every entry names a real field
        cls_name, field = key.split(".")
        cls = {"EvalSpec": EvalSpec}.get(cls_name) or getattr(__import__("darht.config", fromlist=[cls_name]), cls_name)
        assert field in get_type_hints(cls), key


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load(path):
    raw = load_yaml(path)
    if isinstance(raw.get("teachers"), dict):
        cfg = load_pipeline(path)
        Pipeline(cfg, log=lambda *_: None, data=cfg.data)  # every stage's config, no data loading
        check_attack_args_map(cfg.evaluation.get("attack_args"), "evaluation.attack_args")
        for spec in [*cfg.teachers.values(), *cfg.students.values()]:
            if "checkpoint" not in spec:
                check_method_args(METHODS.get(spec.get("method", "darht")), spec.get("method_args", {}))
    else:
        cfg = make_config(raw)
        check_method_args(METHODS.get(cfg.method), cfg.method_args)


# ---- pipeline configs and evaluation specs ----------------------------------------------------
PIPELINE_BAD = [
    ({"teachers": {"a": 3}}, "teachers.a must be a mapping"),
    ({"students": [1]}, "students must be a mapping"),
    ({"teachers": {1: {}}}, "teachers has a key that is not a string"),
    ({"train": 3}, "train must be a mapping"),
    ({"transfer": {"attack": "pgd", "eps": 2}}, "transfer.eps must be in [0, 1]"),
    ({"students": {"s": {"method_args": {"eps": -1}}}}, "students.s.method_args.eps"),
    ({"data": {"limit": -5}}, "data.limit must be >= 1"),
    ({"evaluate_teachers": "sometimes"}, "evaluate_teachers"),
    ({"fallback_data_kwargs": [1]}, "fallback_data_kwargs must be a mapping"),
]


@pytest.mark.parametrize("raw, words", PIPELINE_BAD)
def test_pipeline_config_values_are_checked(raw, words):
    with pytest.raises(DarhtError) as e:
        make_config(raw, cls=PipelineConfig)
    assert words in one_line(e)


def test_pipeline_config_loads_with_overrides(tmp_path):
    cfg = make_config({"teachers": {"t": {"method": "pgd-at"}}, "transfer": None},
                      ["teachers.t.epochs=2", "evaluation.n=50"], cls=PipelineConfig)
    assert cfg.teachers == {"t": {"method": "pgd-at", "epochs": 2}} and cfg.evaluation == {"n": 50}
    assert cfg.transfer is None


SPEC_BAD = [
    ({"eps": 2}, "evaluation.eps must be in [0, 1]"),
    ({"n": 0}, "evaluation.n must be >= 1"),
    ({"pool": 0}, "evaluation.pool must be >= 1"),
    ({"trials": 0}, "evaluation.trials"),
    ({"batch_size": 0}, "evaluation.batch_size"),
    ({"eot": 0}, "evaluation.eot must be >= 1"),
    ({"draws": 0}, "evaluation.draws"),
    ({"eot_sweep": [1, 0]}, "evaluation.eot_sweep[1] must be >= 1"),
    ({"eot_sweep": ["x"]}, "evaluation.eot_sweep[0] must be an integer"),
    ({"attacks": "pgd"}, "evaluation.attacks must be a list"),
    ({"attacks": [["pgd"]]}, "evaluation.attacks[0] must be a string"),
    ({"attack_args": {"pgd": 3}}, "evaluation.attack_args.pgd must be a mapping"),
    ({"attack_args": {"pgd": {"eps": 2}}}, "evaluation.attack_args.pgd.eps"),
    ({"faces": [1]}, "evaluation.faces"),
    ({"nope": 1}, "unknown key 'nope' in 'evaluation'"),
]


@pytest.mark.parametrize("raw, words", SPEC_BAD)
def test_eval_spec_values_are_checked(raw, words):
    with pytest.raises(DarhtError) as e:
        _build(EvalSpec, raw, "evaluation.")
    assert words in one_line(e)


def test_eval_spec_good_values():
    spec = _build(EvalSpec, {"attacks": ["pgd"], "n": None, "pool": None, "eot": None, "eot_sweep": [1, 5],
                             "eps": "8/255", "attack_args": {"pgd": {"steps": 20}}}, "evaluation.")
    assert spec.n is None and spec.pool is None and spec.eot_sweep == [1, 5]
    assert spec.eps == pytest.approx(8 / 255)
    assert make_config({}, ["trials=3"], cls=EvalSpec).trials == 3
    assert _build(EvalSpec, {}, "evaluation.") == EvalSpec()


# ---- method arguments -------------------------------------------------------------------------
def _defaults(cls) -> dict:
    return arg_defaults(cls)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_accepts_its_own_defaults(name):
    cls = METHODS.get(name)
    check_method_args(cls, {})
    check_method_args(cls, None)
    check_method_args(cls, _defaults(cls))
    check_method_args(name, _defaults(cls))  # a registered name works too


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_refuses_unknown_and_mistyped_args(name):
    cls = METHODS.get(name)
    with pytest.raises(DarhtError) as e:
        check_method_args(cls, {"no_such_arg": 1})
    msg = one_line(e)
    assert f"method '{name}'" in msg and "no_such_arg" in msg and "accepted" in msg
    with pytest.raises(DarhtError) as e:
        check_method_args(cls, [1])
    assert f"method '{name}'" in one_line(e)
    if "steps" in accepted_args(cls):
        with pytest.raises(DarhtError) as e:
            check_method_args(cls, {"steps": "abc"})
        assert one_line(e) == f"method '{name}': method_args.steps must be an integer, got 'abc'"


@pytest.mark.parametrize("method, args", [
    ("trades", {"eps": "8/255", "steps": "10", "beta": 6}),
    ("pgd-at", {"eps": 0.03, "alpha": 0.01, "steps": 2.0}),
    ("darht", {"tau": "dynamic", "eps": None, "mc_samples": 4, "dropout": 0.2}),
    ("darht", {"tau": 2, "attack": "fat"}),
    ("fat", {"tau": None, "tau_schedule": [[60, 0], [120, 1]], "scale_schedule": False}),
    ("fat-trades", {"tau_schedule": "dynamic", "scale_schedule": "no"}),
    ("kd", {"alpha": 1, "t": 4}),
])
def test_good_method_args(method, args):
    check_method_args(METHODS.get(method), args)


@pytest.mark.parametrize("method, args, words", [
    ("trades", {"steps": "abc"}, "method 'trades': method_args.steps must be an integer, got 'abc'"),
    ("trades", {"steps": 2.5}, "method_args.steps must be an integer"),
    ("trades", {"beta": "big"}, "method 'trades': method_args.beta must be a number, got 'big'"),
    ("kd", {"t": True}, "method 'kd': method_args.t must be a number, got True"),
    ("darht", {"tau": [1]}, "method 'darht': method_args.tau must be an integer or a string"),
    ("darht", {"mc_samples": "many"}, "method_args.mc_samples must be an integer"),
    ("fat", {"scale_schedule": 1}, "method 'fat': method_args.scale_schedule must be true or false"),
    ("fat", {"tau_schedule": 3}, "method_args.tau_schedule"),
    ("standard", {"eps": 0.1}, "method 'standard': unknown argument(s) eps; accepted: (none)"),
])
def test_bad_method_args(method, args, words):
    with pytest.raises(DarhtError) as e:
        check_method_args(METHODS.get(method), args)
    assert words in one_line(e)


def test_method_args_are_checked_without_constructing_the_method():
    @dataclasses.dataclass(frozen=True)
    class UnbuildableArgs:
        k: int = arg(1, at_least(0))
        rate: float = 0.5
        flag: bool = False
        mode: str = "a"
        extra: Any = None

        def __post_init__(self):
            if self.mode == "never":
                raise ArgError("mode may not be 'never'")

    class Unbuildable:
        name = "unbuildable"
        Args = UnbuildableArgs

        def __init__(self, model, teachers=None, **method_args):
            raise AssertionError("constructed")

    check_method_args(Unbuildable, {"k": 3, "rate": 1, "flag": True, "mode": "b", "extra": [1, 2]})
    for args, words in [({"k": 1.5}, "method_args.k must be an integer"), ({"rate": "x"}, "rate must be a number"),
                        ({"flag": "x"}, "flag must be true or false"), ({"mode": [1]}, "mode must be a string"),
                        ({"other": 1}, "unknown argument(s) other"), ({"k": -1}, "method_args.k must be >= 0"),
                        ({"mode": "never"}, "mode may not be 'never'")]:
        with pytest.raises(DarhtError) as e:
            check_method_args(Unbuildable, args)
        assert words in one_line(e) and "method 'unbuildable'" in str(e.value)


# ---- attack arguments -------------------------------------------------------------------------
def _signature_defaults(name: str) -> dict:
    params = inspect.signature(ATTACKS.get(name)).parameters
    types, _ = attack_arg_types(name)
    return {n: params[n].default for n in types if n in params and params[n].default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_accepts_its_defaults(name):
    check_attack_args(name, {})
    check_attack_args(name, None)
    check_attack_args(name, _signature_defaults(name))
    check_attack_args(name, PAPER_DEFAULTS.get(name, {}))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_refuses_unknown_args_and_eps(name):
    with pytest.raises(DarhtError) as e:
        check_attack_args(name, {"bogus": 1})
    assert one_line(e).startswith(f"attack '{name}': unknown argument 'bogus'; accepted: ")
    with pytest.raises(DarhtError) as e:
        check_attack_args(name, {"eps": 0.1})
    assert f"attack '{name}'" in one_line(e) and "eps" in str(e.value)


def test_autoattack_adapters_accept_their_settings():
    from darht.attacks.autoattack import TUNABLE

    for name in ("apgd-ce", "apgd-t", "fab-t", "autoattack", "autoattack-rand"):
        types, open_ = attack_arg_types(name)
        assert not open_ and set(types) == {*TUNABLE, "n_queries", "seed", "verbose"}
    assert "eot" in attack_arg_types("square")[0]
    check_attack_args("square", {"n_queries": 1000, "eot": 5, "seed": 1, "verbose": False})
    check_attack_args("apgd-ce", {"n_iter": 20, "n_restarts": 2, "eot_iter": 4, "batch_size": 100})


@pytest.mark.parametrize("name, args", [
    ("pgd", {"steps": 20, "alpha": "2/255", "loss": "cw", "start": "uniform", "eot": 5}),
    ("cw-inf", {"alpha": None, "kappa": 10}),
    ("fgsm", {"random_start": True, "alpha": None}),
    ("fat-pgd", {"tau": 2, "loss": "kl", "omega": 0}),
    ("trades-pgd", {"steps": "5"}),
])
def test_good_attack_args(name, args):
    check_attack_args(name, args)


@pytest.mark.parametrize("name, args, words", [
    ("pgd", {"steps": "abc"}, "attack 'pgd': steps must be an integer, got 'abc'"),
    ("pgd", {"bogus": 1}, "attack 'pgd': unknown argument 'bogus'; accepted: alpha, eot, kappa, loss, sigma, start, steps"),
    ("pgd", {"steps": -1}, "attack 'pgd': steps must be >= 0, got -1"),
    ("pgd", {"loss": "mse"}, "attack 'pgd': loss must be one of ce, cw, kl"),
    ("pgd", {"target_probs": [0.5]}, "unknown argument 'target_probs'"),
    ("pgd", {"eot": 0}, "attack 'pgd': eot must be >= 1"),
    ("fgsm", {"random_start": "maybe"}, "attack 'fgsm': random_start must be true or false"),
    ("square", {"n_queries": "many"}, "attack 'square': n_queries must be an integer, got 'many'"),
    ("square", {"n_queries": 0}, "attack 'square': n_queries must be >= 1"),
    ("apgd-ce", {"eot": 5}, "attack 'apgd-ce': unknown argument 'eot'"),
    ("apgd-ce", {"n_iter": 2.5}, "attack 'apgd-ce': n_iter must be an integer"),
    ("fat-pgd", {"loss": "cw"}, "attack 'fat-pgd': loss must be one of ce, kl"),
    ("pgd", [1], "attack 'pgd': its arguments must be a mapping"),
])
def test_bad_attack_args(name, args, words):
    with pytest.raises(DarhtError) as e:
        check_attack_args(name, args)
    assert words in one_line(e)


def test_unknown_attack_name():
    with pytest.raises(DarhtError, match="unknown attack 'nope'"):
        check_attack_args("nope", {})


def test_attack_args_map():
    check_attack_args_map(None)
    check_attack_args_map({})
    check_attack_args_map({"pgd": {"steps": 20}, "square": {"n_queries": 1000}, "apgd-ce": {}})
    for bad, words in [({"nope": {}}, "attack_args: unknown attack 'nope'; choose from: "),
                       ({"pgd": 3}, "attack_args.pgd must be a mapping"),
                       ([1], "attack_args must be a mapping"),
                       ({"pgd": {"steps": "abc"}}, "attack 'pgd': steps must be an integer")]:
        with pytest.raises(DarhtError) as e:
            check_attack_args_map(bad)
        assert words in one_line(e)
    with pytest.raises(DarhtError, match=r"^evaluation\.attack_args: unknown attack"):
        check_attack_args_map({"nope": {}}, "evaluation.attack_args")


def test_attack_arg_overrides_parse_like_the_cli():
    from darht.config import parse_override

    keys, value = parse_override("pgd.steps=abc")
    with pytest.raises(DarhtError) as e:
        check_attack_args_map({keys[0]: {keys[1]: value}})
    assert one_line(e) == "attack 'pgd': steps must be an integer, got 'abc'"


def test_check_run_checks_method_args_and_the_validation_attack():
    from darht.config import check_run

    check_run(make_config({"method": "trades", "method_args": {"steps": 3}}))
    with pytest.raises(DarhtError, match="method 'trades': method_args.steps must be an integer"):
        check_run(make_config({"method": "trades", "method_args": {"steps": "abc"}}))
    with pytest.raises(DarhtError, match="unknown method"):
        check_run(make_config({"method": "nope"}))
    with pytest.raises(DarhtError, match="unknown attack"):
        check_run(make_config({"eval": {"attack": "nope"}}))


def test_yaml_helper_round_trips():
    assert yaml.safe_load(nested_yaml("optim.lr", "-1")) == {"optim": {"lr": -1}}
