"""Search spaces: ``supernets.get(name)`` returns a :class:`SearchSpace`.

Spaces register themselves with :func:`register`; ``names()`` lists them;
:func:`resolve_arch` reads an architecture however a user names it.
"""
from __future__ import annotations

from supernets import darts, nb201, spos  # noqa: F401  (registration)
from supernets import enas_micro  # noqa: F401  (registration)
from supernets import enas_macro  # noqa: F401  (registration)
from supernets import ofa_mbv3  # noqa: F401  (registration)
from supernets.base import Arch, SearchSpace, Supernet, count_parameters, network_cost
from supernets.registry import get, names, register
from supernets.sources import resolve_arch

__all__ = ["Arch", "SearchSpace", "Supernet", "count_parameters", "network_cost", "get", "names",
           "register", "resolve_arch"]
