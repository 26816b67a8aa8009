"""Parts by name, as timm's model registry: feature extractors, fusion rules, weight sources, samplers.

A part registers itself with one decorator on its class; the class carries its metadata (its options
model, and for extractors whether it needs weights and which source supplies them by default). Everything
else (manifests, the command line's flags, ``compare``'s list) is derived from the registry, so a new part
is one new module.

Light on purpose: importing a registry (or a part's module) never imports torch, so ``--help`` is fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from patchbank.errors import InputError


class NoOptions(BaseModel):
    """The options model of a part that has none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Part:
    """What every registered class has: its name (set by the registry) and its options model."""

    name: ClassVar[str]
    options_model: ClassVar[type[BaseModel]] = NoOptions


P = TypeVar("P", bound=type[Part])


class Registry(Generic[P]):
    """Named classes of one kind of part."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._parts: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[P], P]:
        """Class decorator: register the class under ``name`` (a later registration of a name replaces it)."""

        def deco(cls: P) -> P:
            cls.name = name
            self._parts[name] = cls
            return cls

        return deco

    def remove(self, name: str) -> None:
        """Forget ``name`` (a part registered for a while, e.g. in a test)."""
        self._parts.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._parts)

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> P:
        """The class registered as ``name``; InputError listing the known names otherwise."""
        try:
            return self._parts[name]
        except KeyError:
            raise InputError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def options(self, name: str, given: dict[str, Any] | None = None) -> BaseModel:
        """``name``'s options model filled from ``given`` (defaults for the rest); InputError naming the
        option that is wrong."""
        return parse_options(self.get(name).options_model, given, f"{self.kind} {name}")


def parse_options(model: type[BaseModel], given: dict[str, Any] | None, what: str) -> BaseModel:
    try:
        return model(**(given or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise InputError(f"bad option for {what}: {where}: {first['msg']}") from exc
