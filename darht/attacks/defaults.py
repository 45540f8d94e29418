"""The DARHT paper's evaluation settings per attack, as each attack registered them
(`paper_defaults` in its registry metadata; eps = 8/255 is every attack's own default).

The evaluator applies them as keyword arguments, under any user overrides. `PAPER_DEFAULTS` is
a read-only view of the registry, so a new attack brings its defaults with its registration.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from darht.registry import ATTACKS


class _RegistryDefaults(Mapping):
    def __getitem__(self, name: str) -> dict[str, Any]:
        if name not in ATTACKS:
            raise KeyError(name)
        return dict(ATTACKS.meta(name).get("paper_defaults") or {})

    def __iter__(self) -> Iterator[str]:
        return iter(ATTACKS.names())

    def __len__(self) -> int:
        return len(ATTACKS.names())


PAPER_DEFAULTS: Mapping[str, dict[str, Any]] = _RegistryDefaults()
