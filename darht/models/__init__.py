"""Importing this package registers every module in it (see darht.registry)."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

from darht.models.io import load_model, read_meta, save_model  # noqa: E402
from darht.models.zoo import create_model, is_randomized, list_models  # noqa: E402

__all__ = ["create_model", "list_models", "is_randomized", "save_model", "load_model", "read_meta"]
