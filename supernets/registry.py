"""The registry of search spaces: ``@register`` files one instance per space name."""
from __future__ import annotations

from typing import TypeVar

from supernets.base import SearchSpace

_SPACES: dict[str, SearchSpace] = {}
S = TypeVar("S", bound=type)


def register(cls: S) -> S:
    """Class decorator: file one instance of a SearchSpace under ``cls.name``; duplicates raise."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _SPACES:
        raise ValueError(f"search space {cls.name!r} is registered twice")
    _SPACES[cls.name] = cls()
    return cls


def get(name: str) -> SearchSpace:
    """The registered space ``name``; KeyError listing the accepted names otherwise."""
    if name not in _SPACES:
        raise KeyError(f"unknown search space {name!r}; accepted: {', '.join(sorted(_SPACES))}")
    return _SPACES[name]


def names() -> list[str]:
    return sorted(_SPACES)
