"""Name -> implementation registries (methods, objectives, schemes, exporters, sources).

YAML names resolve through these, never through import paths. Unknown names fail listing the
valid ones; duplicate registrations are a programming error. An entry may register a typed options
model with it (``register(name, options=Model)``, a pydantic model), which the config loader uses to
check a YAML ``options:`` mapping when the file loads.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

from edgeft.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._options: dict[str, Any] = {}

    def register(self, name: str, options: Optional[type] = None) -> Callable[[T], T]:
        """Register ``name``; ``options`` is its typed options model (a pydantic model class), if any."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            if options is not None:
                self._options[name] = options
            return obj

        return deco

    def options_of(self, name: str) -> Optional[type]:
        """The options model registered with ``name`` (None when it registered none)."""
        return self._options.get(name)

    def get(self, name: str, where: str = "") -> T:
        if name not in self._items:
            prefix = f"{where}: " if where else ""
            hint = difflib.get_close_matches(name, list(self._items), n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{prefix}unknown {self.kind} {name!r}{did}; valid choices: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
