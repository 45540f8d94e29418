"""Importing this package registers every module in it (see darht.registry)."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

from darht.attacks.autoattack import run_autoattack  # noqa: E402
from darht.attacks.core import (ce_loss, cw_loss, eval_mode, input_grad, kl_loss,  # noqa: E402
                                preserved_rng, project_linf)
from darht.attacks.defaults import PAPER_DEFAULTS  # noqa: E402
from darht.attacks.eot import EOTWrapper  # noqa: E402
from darht.attacks.fat import fat_pgd  # noqa: E402
from darht.attacks.fgsm import fgsm  # noqa: E402
from darht.attacks.pgd import cw_inf, pgd  # noqa: E402
from darht.attacks.trades import trades_pgd  # noqa: E402
