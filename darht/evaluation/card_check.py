"""Reading a model card back and re-measuring its numbers (`darht evaluate --card`).

The card's schema, and how its numbers and tolerances are made, are in darht.evaluation.card.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from darht.errors import DarhtError
from darht.evaluation.card import (CARD_NAME, CARD_VERSION, SETTINGS, _plain, numbers_of, rerun_argv, settings_of,
                                   sha256, tolerance)
from darht.utils import read_json


def card_path(path: str | Path) -> Path:
    """The card file meant by `path`: the card.json itself or the directory holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / CARD_NAME
    if not p.exists():
        raise DarhtError(f"model card not found: {p}")
    return p


def read_card(path: str | Path) -> tuple[Path, dict]:
    """(card file, card), checked to be a card of a version this darht reads; DarhtError otherwise."""
    p = card_path(path)
    card = read_json(p, "model card")
    if not isinstance(card, dict) or card.get("kind") != "model-card":
        raise DarhtError(f"{p}: not a darht model card (no kind: model-card)")
    if card.get("card_version") != CARD_VERSION:
        raise DarhtError(f"{p}: card_version {card.get('card_version')!r} is not one this darht reads "
                         f"({CARD_VERSION})")
    evals, numbers = card.get("evaluations"), card.get("numbers")
    if not isinstance(evals, dict) or not evals or not isinstance(numbers, list):
        raise DarhtError(f"{p}: a model card needs 'evaluations' (an object) and 'numbers' (a list)")
    for face, ev in evals.items():
        argv = ev.get("argv") if isinstance(ev, dict) else None
        if not isinstance(argv, list) or not argv or argv[0] != "evaluate" or not all(isinstance(a, str) for a in argv):
            raise DarhtError(f"{p}: evaluations.{face}.argv must be a `darht evaluate` argv (a list of strings)")
    for i, num in enumerate(numbers):
        ok = isinstance(num, dict) and isinstance(num.get("name"), str) and num.get("evaluation") in evals
        for key in ("value", "tolerance", "n"):
            ok = ok and isinstance(num.get(key), (int, float)) and not isinstance(num.get(key), bool)
        if not ok:
            raise DarhtError(f"{p}: numbers[{i}] needs name, evaluation (one of {', '.join(evals)}), "
                             "and numeric value, tolerance and n")
    model = card.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("weights"), str) \
            or Path(model["weights"]).name != model["weights"] or not model["weights"].endswith(".safetensors"):
        raise DarhtError(f"{p}: a model card needs model.weights, the name of a .safetensors file beside it")
    return p, card


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def verify_card(card: dict, directory: str | Path, rerun: Callable[[list[str]], tuple[dict, str]], *,
                root: str | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Re-measure every number of `card` (read by read_card) on the same examples with the same settings.

    `rerun(argv) -> (record, face)`: runs one `darht evaluate` argv through the CLI's evaluation
    path. Returns {reproduced, numbers: [{name, recorded, remeasured, tolerance, ok, exact}],
    not_reproduced: [names], problems: [sentences], notes: [sentences], weights_ok}.
    """
    directory = Path(directory)
    weights = directory / card["model"]["weights"]
    if not weights.is_file():
        raise DarhtError(f"the card's model weights are missing: {weights}")
    problems: list[str] = []
    notes: list[str] = []
    weights_ok = card["model"].get("sha256") == sha256(weights)
    if not weights_ok:
        problems.append(f"model weights: {weights.name} is not the file the card was made with (sha256 differs)")
    rows = []
    for face, ev in card["evaluations"].items():
        argv = rerun_argv(ev["argv"], weights, root=root, device=device, progress=progress)
        record, got_face = rerun(argv)
        got = {**settings_of(record, got_face), "examples_index": record["examples"]["index"]}
        want = {k: ev.get(k) for k in SETTINGS}
        want["examples_index"] = (ev.get("examples") or {}).get("index")
        for k, v in _plain(got).items():
            if k == "data":  # the split's size and name must match; its location may differ
                v = {kk: vv for kk, vv in (v or {}).items() if kk in ("name", "split", "size")}
                want[k] = {kk: vv for kk, vv in (want[k] or {}).items() if kk in ("name", "split", "size")}
            if v != want[k]:
                what = "examples (indices)" if k == "examples_index" else k
                problems.append(f"evaluations.{face}: {what} differs from the card's "
                                f"({json.dumps(want[k])[:60]} vs re-run {json.dumps(v)[:60]})")
        if device is not None and ev.get("device") and device.split(":")[0] != str(ev["device"]).split(":")[0]:
            notes.append(f"evaluations.{face}: re-measured on {device}, recorded on {ev['device']}: "
                         "deterministic numbers can differ between device types")
        now = numbers_of(record, got_face)
        for num in (x for x in card["numbers"] if x["evaluation"] == face):
            # the re-run's randomized and n, not what the card claims for the number
            rand, n = bool(record["randomized"]), int(record["n"])
            tol = tolerance(float(num["value"]), n, rand)
            if num["n"] != n:
                problems.append(f"{num['name']}: the card says n={num['n']}, its command measures n={n}")
            if not _same(tol, float(num["tolerance"])):
                problems.append(f"{num['name']}: the card's tolerance {num['tolerance']:.6f} does not follow its "
                                f"rule ({tol:.6f} for n={n})")
            if num["name"] not in now:
                rows.append({"name": num["name"], "recorded": num["value"], "remeasured": None, "tolerance": tol,
                             "ok": False, "exact": False})
                continue
            value = now[num["name"]][0]
            exact = _same(value, float(num["value"]))
            ok = exact or (rand and abs(value - float(num["value"])) <= tol)
            rows.append({"name": num["name"], "recorded": num["value"], "remeasured": value, "tolerance": tol,
                         "ok": ok, "exact": exact})
    bad = [r["name"] for r in rows if not r["ok"]]
    problems += [f"{r['name']}: recorded {r['recorded']:.6f}, re-measured "
                 f"{'nothing' if r['remeasured'] is None else format(r['remeasured'], '.6f')}"
                 + ("" if r["tolerance"] == 0 else f" (tolerance {r['tolerance']:.6f})") for r in rows if not r["ok"]]
    return {"kind": "card-verification", "reproduced": not problems, "numbers": rows, "not_reproduced": bad,
            "problems": problems, "notes": notes, "weights_ok": weights_ok}
