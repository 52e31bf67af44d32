"""Search algorithms as LightningModules on one shared base.

Importing a subclass here is what lets LightningCLI accept ``--model GdasSearch``.
"""
from oneshot.algorithms.base import SearchAlgorithm
from oneshot.algorithms.darts import DartsSearch
from oneshot.algorithms.gdas import GdasSearch
from oneshot.algorithms.pcdarts import PCDartsSearch
from oneshot.algorithms.rsps import RandomSinglePathSearch

ALGORITHMS = {"darts": DartsSearch, "pcdarts": PCDartsSearch, "gdas": GdasSearch,
              "rsps": RandomSinglePathSearch}

__all__ = ["SearchAlgorithm", "DartsSearch", "PCDartsSearch", "GdasSearch", "RandomSinglePathSearch",
           "ALGORITHMS"]
