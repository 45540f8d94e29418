"""`darht run CONFIG`: teachers -> students -> evaluation -> transfer -> report, declared in YAML.

Each stage is skipped when its outputs exist (a finished run directory, a stored record), and a
training stage that died resumes from its last checkpoint, so re-running a config that was
interrupted continues where it stopped. Layout of `out/`:
  teachers/<name>/  students/<name>/  records/<name>.json  records/transfer.json  report/
What a config declares (PipelineConfig, seeds) is darht.stages.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from darht.attacks.args import check_attack_args, check_attack_args_map
from darht.config import DataConfig, _build, check_run, make_config
from darht.data import load_dataset
from darht.engine.trainer import train
from darht.errors import DarhtError
from darht.evaluation.records import data_info, evaluation_record, model_info, transfer_record
from darht.evaluation.robustness import evaluate
from darht.evaluation.spec import EvalSpec
from darht.evaluation.transfer import student_transfer, transfer_matrix
from darht.models.io import load_model, read_meta
from darht.models.teachers import as_spec, load_attackable
from darht.registry import ATTACKS
from darht.report.build import write_report
from darht.report.claims import check_claims, check_convergence
from darht.stages import PipelineConfig, _merge, expand_seeds, load_pipeline  # noqa: F401 (the pipeline's API)
from darht.utils import atomic_write_json, git_revision, resolve_device


class Pipeline:
    def __init__(self, cfg: PipelineConfig, log=print, data: DataConfig | None = None):
        cfg = copy.copy(cfg)
        cfg.students = expand_seeds(cfg.students)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.log = log
        self.data = data or self._choose_data()
        self.check()

    def check(self) -> None:
        """Build every stage's config before any work, so a typo fails in a second, not in hour two."""
        for name, spec in self.cfg.teachers.items():
            if "checkpoint" not in spec:
                check_run(self._train_cfg(spec, self.out / "teachers" / name, []))
        for name, spec in self.cfg.students.items():
            if not self.teacher_names(spec):
                raise DarhtError(f"student '{name}' names no teachers")
            check_run(self._train_cfg(spec, self.out / "students" / name, self.student_teachers(spec)))
        for name, spec in self.cfg.teachers.items():
            if "checkpoint" in spec:
                ckpt = self._checkpoint(name)  # NAME=PATH: PATH is looked for when loaded (shipped configs name files to fetch)
                if not Path(ckpt).exists() and "=" not in ckpt:
                    raise DarhtError(f"teacher '{name}': checkpoint not found: {ckpt}")
        spec = self.eval_spec()
        for attack in (spec.attacks or []) + (spec.eot_sweep_attacks or []):
            ATTACKS.get(attack)
        check_attack_args_map(spec.attack_args, "evaluation.attack_args")
        unknown = sorted(set(spec.attack_args) - set(spec.attacks or ATTACKS.names()))
        if unknown:
            raise DarhtError(f"evaluation.attack_args names attack(s) not evaluated: {', '.join(unknown)}")
        split = self.cfg.evaluation.get("split", "test")
        if split != "test":
            raise DarhtError(f"evaluation.split must be 'test' (pipelines evaluate on the test split), got '{split}'")
        self.transfer_settings()
        check_claims(self.cfg.claims)
        check_convergence(self.cfg.convergence)

    def transfer_settings(self) -> dict | None:
        """The transfer stage's settings, checked: {attack, eps, n, attack_args, draws}."""
        if self.cfg.transfer is None:
            return None
        t = dict(self.cfg.transfer)
        known = {"attack", "eps", "n", "attack_args", "draws"}
        bad = sorted(set(t) - known)
        if bad:
            raise DarhtError(f"config: unknown key '{bad[0]}' in 'transfer'; known: {', '.join(sorted(known))}")
        ATTACKS.get(t.get("attack", "pgd"))
        check_attack_args(t.get("attack", "pgd"), t.get("attack_args") or {})
        eps = t.get("eps", 8 / 255)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps <= 1:
            raise DarhtError(f"config: transfer.eps must be a number in [0, 1], got {eps!r}")
        for key in ("n", "draws"):
            v = t.get(key, 1)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise DarhtError(f"config: transfer.{key} must be an integer >= 1, got {v!r}")
        if not isinstance(t.get("attack_args") or {}, dict):
            raise DarhtError("config: transfer.attack_args must be a mapping")
        return t

    def eval_spec(self):

        spec_raw = {k: v for k, v in self.cfg.evaluation.items() if k != "split"}
        spec_raw.setdefault("progress", self.cfg.progress)
        return _build(EvalSpec, spec_raw, "evaluation.")

    # -- data: fall back (with a notice) when the configured data set is not installed
    def _choose_data(self) -> DataConfig:
        data = self.cfg.data
        try:
            load_dataset(data.name, "test", data.root, **data.kwargs)
            return data
        except DarhtError as e:
            if not self.cfg.fallback_data:
                raise
            self.log(f"notice: {data.name} is not available ({e}); using {self.cfg.fallback_data} instead")
            return DataConfig(**{**asdict(data), "name": self.cfg.fallback_data, "root": None,
                                 "kwargs": dict(self.cfg.fallback_data_kwargs)})

    def _train_cfg(self, stage: dict, out: Path, teachers: list[str] | dict[str, str]):
        if "teacher_natural" in stage:
            raise DarhtError("config: teacher_natural was replaced by teacher roles: write "
                             "teachers: {adversarial: A, natural: B} (or the list [A, B])")
        stage = {"method": "darht", **stage} if teachers else stage  # a student's default method
        raw = _merge(self.cfg.train, {k: v for k, v in stage.items() if k != "teachers"})
        raw = _merge(raw, {"data": asdict(self.data), "out": str(out), "seed": raw.get("seed", self.cfg.seed),
                           "device": self.cfg.device, "progress": self.cfg.progress,
                           "teachers": teachers})
        return make_config(raw)

    @staticmethod
    def teacher_names(spec: dict) -> list[str]:
        """The teachers a student stage names: a list, or the values of a mapping role -> name."""
        teachers = spec.get("teachers") or []
        return list(teachers.values()) if isinstance(teachers, dict) else list(teachers)

    def student_teachers(self, spec: dict) -> list[str] | dict[str, str]:
        """A student stage's teachers as paths, in the form the stage gives them (list or roles)."""
        teachers = spec.get("teachers") or []
        if isinstance(teachers, dict):
            return {role: self.teacher_path(t) for role, t in teachers.items()}
        return [self.teacher_path(t) for t in teachers]

    def teacher_path(self, name: str) -> str:
        spec = self.cfg.teachers.get(name)
        if spec is None:
            if Path(name).exists() or name.startswith("timm:"):
                return name  # a checkpoint path or model spec given directly
            raise DarhtError(f"student refers to unknown teacher '{name}'; teachers: {', '.join(self.cfg.teachers)}")
        return (self._checkpoint(name) if spec.get("checkpoint") else None) or str(self.out / "teachers" / name)

    def _checkpoint(self, name: str) -> str:
        """A teacher's `checkpoint`: a path, NAME=PATH, or {robustbench: NAME, path: PATH}."""
        return as_spec(self.cfg.teachers[name]["checkpoint"], f"teachers.{name}.checkpoint")

    # -- stages
    def run_teachers(self) -> None:
        for name, spec in self.cfg.teachers.items():
            if "checkpoint" in spec:
                self.log(f"[teacher {name}] using {self._checkpoint(name)}")
                continue
            self.log(f"[teacher {name}] training")
            train(self._train_cfg(spec, self.out / "teachers" / name, []), resume=True)

    def run_students(self) -> None:
        for name, spec in self.cfg.students.items():
            self.log(f"[student {name}] {spec.get('method', 'darht')} from {', '.join(self.teacher_names(spec))}")
            train(self._train_cfg(spec, self.out / "students" / name, self.student_teachers(spec)), resume=True)

    def _test_data(self):
        d = self.data
        return load_dataset(d.name, "test", d.root, **d.kwargs)

    def run_evaluation(self) -> None:
        spec = self.eval_spec()
        data = self._test_data()
        device = resolve_device(self.cfg.device)
        targets = {f"student-{n}": self.out / "students" / n for n in self.cfg.students}
        if self.cfg.evaluate_teachers:
            targets.update({f"teacher-{n}": Path(self.teacher_path(n)) for n in self.cfg.teachers})
        for name, run_dir in targets.items():
            path = self.out / "records" / f"{name}.json"
            if path.exists():
                self.log(f"[evaluate {name}] record exists, skipped")
                continue
            self.log(f"[evaluate {name}]")
            torch.manual_seed(spec.seed)
            model = load_model(run_dir)
            # the stored (uint8) images: evaluate converts each batch to float on the device
            rec = evaluation_record(evaluate(model, data.x, data.y, spec, device), spec=spec,
                                    model=model_info(run_dir, model, read_meta(run_dir)),
                                    data=data_info(self.data.name, "test", len(data)), stage="evaluation")
            atomic_write_json(path, rec)

    def run_transfer(self) -> None:
        if self.cfg.transfer is None:
            return
        path = self.out / "records" / "transfer.json"
        if path.exists():
            self.log("[transfer] record exists, skipped")
            return
        self.log("[transfer]")
        start = time.time()
        t = dict(self.cfg.transfer)
        kw = {"attack": t.get("attack", "pgd"), "eps": float(t.get("eps", 8 / 255)), "n": t.get("n", 1000),
              "attack_args": t.get("attack_args"), "seed": self.cfg.seed, "draws": int(t.get("draws", 20))}
        data = self._test_data()
        device = resolve_device(self.cfg.device)
        x, y = data.x.to(device), data.y.to(device)  # uint8 stays uint8: converted per batch on the device
        c, h, _ = data.shape
        load = {}

        def teacher(name: str):
            if name not in load:
                load[name] = load_attackable(self.teacher_path(name), num_classes=data.num_classes, in_chans=c,
                                             img_size=h).to(device)
            return load[name]

        result: dict[str, Any] = {"students": {}}
        infos: dict[str, dict] = {"students": {}, "teachers": {}}
        for sname, spec in self.cfg.students.items():
            names = self.teacher_names(spec)
            if not names:
                continue
            torch.manual_seed(self.cfg.seed)
            student = load_model(self.out / "students" / sname).to(device).eval()
            infos["students"][sname] = model_info(self.out / "students" / sname, student)
            result["students"][sname] = student_transfer(student, {n: teacher(n) for n in names}, x, y, **kw)
        if len(self.cfg.teachers) >= 2:
            torch.manual_seed(self.cfg.seed)
            result["teacher_matrix"] = transfer_matrix({n: teacher(n) for n in self.cfg.teachers}, x, y, **kw)
        infos["teachers"] = {n: model_info(self.teacher_path(n), m) for n, m in load.items()}
        rec = transfer_record(result, settings=kw, models=infos, data=data_info(self.data.name, "test", len(data)),
                              wall_time_s=time.time() - start, stage="transfer")
        atomic_write_json(path, rec)

    def run(self) -> Path:
        start = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.cfg.claims or self.cfg.convergence:  # what `darht report` needs to rebuild the claims table
            atomic_write_json(self.out / "study.json", {"claims": check_claims(self.cfg.claims),
                                                        "convergence": check_convergence(self.cfg.convergence)})
        self.run_teachers()
        self.run_students()
        self.run_evaluation()
        self.run_transfer()
        report = write_report(self.out)
        status = {"name": self.cfg.name, "data": self.data.name, "git": git_revision(),
                  "wall_time_s_this_invocation": round(time.time() - start, 1), "command": " ".join(sys.argv)}
        atomic_write_json(self.out / "run.json", status)
        return report
