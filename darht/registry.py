"""One registry per kind of component: CLI strings, YAML and parametrized tests resolve names here."""

from __future__ import annotations

from typing import Any, Callable

from darht.errors import DarhtError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, obj: Any = None, **meta: Any) -> Callable:
        """Register `obj` under `name` with its metadata (e.g. an attack's `eot` keyword);
        usable as a decorator when `obj` is omitted."""

        def add(o: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = o
            self._meta[name] = dict(meta)
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> Any:
        _load_builtins()
        if name not in self._items:
            raise DarhtError(f"unknown {self.kind} '{name}'; choose from: {', '.join(self.names())}")
        return self._items[name]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata `name` was registered with (a copy; {} when none)."""
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._items


MODELS = Registry("model")
ATTACKS = Registry("attack")
METHODS = Registry("method")
DATASETS = Registry("dataset")

_loaded = False


def _load_builtins() -> None:
    """Import the packages whose modules register themselves (once, lazily, to avoid cycles)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for pkg in ("darht.data", "darht.models", "darht.attacks", "darht.methods"):
        importlib.import_module(pkg)
