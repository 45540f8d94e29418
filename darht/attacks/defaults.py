"""The DARHT paper's evaluation settings per attack (eps = 8/255 is every attack's own default).

The evaluator applies `PAPER_DEFAULTS[name]` as keyword arguments, under any user overrides.
"""

from __future__ import annotations

from typing import Any

PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "fgsm": {"random_start": False},
    "pgd": {"steps": 10, "alpha": 2 / 255, "loss": "ce", "start": "normal", "sigma": 0.001},
    "cw-inf": {"kappa": 50.0, "steps": 30, "alpha": None},  # alpha None = eps / 4, uniform start
    "fat-pgd": {},
    "trades-pgd": {},
    "apgd-ce": {},
    "apgd-dlr": {},
    "apgd-t": {},
    "fab-t": {},
    "square": {"n_queries": 5000},
    "autoattack": {},
    "autoattack-rand": {},
}
