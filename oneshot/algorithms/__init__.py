"""Search algorithms as LightningModules on one shared base."""
from oneshot.algorithms.base import SearchAlgorithm
from oneshot.algorithms.darts import DartsSearch

ALGORITHMS = {"darts": DartsSearch}

__all__ = ["SearchAlgorithm", "DartsSearch", "ALGORITHMS"]
