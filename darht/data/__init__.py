"""Importing this package registers every module in it (see darht.registry)."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

from darht.data.base import ImageData, dataset_info, load_dataset, split_train_val  # noqa: E402,F401
from darht.data.cache import build_cache, open_cached, open_dataset  # noqa: E402,F401
from darht.data.download import download  # noqa: E402,F401
from darht.data.loader import Augment, Loader  # noqa: E402,F401
