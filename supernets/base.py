"""The currency every layer trades in (:class:`Arch`) and the interface of a search space.

An Arch is an immutable mapping from choice label to option index (an int, or a tuple of ints),
tagged with its space's name. It is JSON-serializable and has one canonical string per space
(``SearchSpace.format``), so search, discretization, retraining and ranking all exchange it.
"""
from __future__ import annotations

import inspect
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from supernets.labels import is_edge

Choice = Any  # int, or a (nested) tuple of ints


def _freeze(value: Any) -> Choice:
    """Lists from JSON back to tuples, recursively, so Archs hash and compare."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"an Arch choice is an int or a tuple of ints, not {value!r}")
    return value


class Arch(Mapping):
    """Immutable mapping choice label -> option index, tagged with its space.

    Example:
        >>> a = Arch("nb201", {"1<-0": 3})
        >>> a["1<-0"], a.space
        (3, 'nb201')
    """

    __slots__ = ("_space", "_choices")

    def __init__(self, space: str, choices: Mapping[str, Choice] | Iterable[tuple[str, Choice]]):
        items = choices.items() if isinstance(choices, Mapping) else choices
        object.__setattr__(self, "_space", space)
        object.__setattr__(self, "_choices", tuple((str(k), _freeze(v)) for k, v in items))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Arch is immutable")

    @property
    def space(self) -> str:
        return self._space

    def __getitem__(self, label: str) -> Choice:
        for key, value in self._choices:
            if key == label:
                return value
        raise KeyError(label)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __hash__(self) -> int:
        return hash((self._space, self._choices))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Arch):
            return self._space == other._space and self._choices == other._choices
        return NotImplemented

    def __repr__(self) -> str:
        return f"Arch({self._space!r}, {dict(self._choices)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuild through ``__init__``: copy, deepcopy and pickle work despite immutability (a
        module holding an Arch, such as RetrainModule, can then be copied or sent to a process)."""
        return (Arch, (self._space, self._choices))

    def to_json(self) -> dict[str, Any]:
        return {"space": self._space, "choices": {k: v for k, v in self._choices}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Arch":
        if not isinstance(data, Mapping) or "space" not in data or "choices" not in data:
            raise ValueError("an arch JSON object needs the keys 'space' and 'choices'")
        if not isinstance(data["space"], str) or not isinstance(data["choices"], Mapping):
            raise ValueError("an arch JSON object has a string 'space' and an object 'choices' (label -> choice)")
        try:
            return cls(data["space"], data["choices"])
        except TypeError as error:
            raise ValueError(f"arch JSON: {error}") from None


def read_arch_text(text_or_path: str) -> str:
    """The text of an architecture: the string itself, or the contents of an ``.json`` file.

    Raises:
        FileNotFoundError: a ``.json`` path that does not exist.
    """
    text = text_or_path.strip()
    if not text.startswith(("{", "|", "Genotype")) and text.endswith(".json"):
        try:
            with open(text) as f:
                return f.read().strip()
        except FileNotFoundError:
            raise FileNotFoundError(f"arch file {text} does not exist") from None
    return text


class SearchSpace(ABC):
    """What a search space offers; one subclass per space, registered in ``supernets``.

    Subclasses set ``name`` and implement the abstract methods. ``decisions(arch)`` turns an
    Arch into one decision per supernet edge label, so a subnet runs with inherited weights.
    """

    name: str = ""

    # --- encoding ---------------------------------------------------------------------------
    def parse(self, text: str) -> Arch:
        """Canonical string (or JSON with ``space``/``choices``) -> Arch; ValueError if malformed.

        The one entry for every space: the type check, the surrounding whitespace and the JSON
        form are handled here, the space's own string by :meth:`parse_string`."""
        if not isinstance(text, str):
            raise TypeError(f"parse expects a string, got {type(text).__name__}")
        text = text.strip()
        return self.parse_json(text) if text.startswith("{") else self.parse_string(text)

    @abstractmethod
    def parse_string(self, text: str) -> Arch:
        """The space's canonical string (stripped, not JSON) -> Arch; ValueError if malformed."""

    @abstractmethod
    def format(self, arch: Arch) -> str:
        """Arch -> canonical string."""

    def parse_json(self, text: str) -> Arch:
        """An Arch JSON object (``{"space", "choices"}``, or an ``arch.json`` record holding one
        under ``arch``) -> Arch of this space; ValueError when it is not JSON."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise ValueError(f"invalid arch JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"arch JSON is an object with 'space' and 'choices', not a {type(data).__name__}")
        arch = self.check(Arch.from_json(data.get("arch", data) if "choices" not in data else data))
        try:  # the space's own string parser is its validity check: labels, ranges, shapes
            valid = self.parse_string(self.format(arch)) == arch
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise ValueError(f"arch JSON is not a valid {self.name} arch: {error}") from None
        if not valid:
            raise ValueError(f"arch JSON is not a valid {self.name} arch: its choices do not round-trip")
        return arch

    def check(self, arch: Arch) -> Arch:
        """Raise ValueError if ``arch`` belongs to another space; return it otherwise."""
        if not isinstance(arch, Arch):
            raise TypeError(f"expected an Arch, got {type(arch).__name__}")
        if arch.space != self.name:
            raise ValueError(f"arch belongs to space {arch.space!r}, not {self.name!r}")
        return arch

    def load(self, text_or_path: str) -> Arch:
        """An arch from a canonical string, a JSON string or an ``arch.json`` file."""
        return self.parse(read_arch_text(text_or_path))

    # --- sampling and evolution -------------------------------------------------------------
    @abstractmethod
    def sample(self, rng: random.Random | None = None) -> Arch:
        """A uniformly random arch."""

    @abstractmethod
    def mutate(self, arch: Arch, rng: random.Random | None = None) -> Arch:
        """Change one choice of ``arch`` to a different option."""

    def resample(self, arch: Arch, probability: float, rng: random.Random | None = None) -> Arch:
        """Each choice redrawn uniformly with ``probability`` (it may draw its old value): SPOS's
        mutation, a gene at a time. The redrawn values come from one fresh :meth:`sample`, so a
        choice stays valid wherever the space constrains it (a DARTS node's two distinct inputs)."""
        rng = rng or random.Random()
        self.check(arch)
        fresh = self.sample(rng)
        return Arch(self.name, {k: (fresh[k] if rng.random() < probability else arch[k]) for k in arch})

    def crossover(self, a: Arch, b: Arch, rng: random.Random | None = None) -> Arch:
        """Each choice taken from either parent with probability 1/2."""
        rng = rng or random.Random()
        self.check(a), self.check(b)
        return Arch(self.name, {k: (a[k] if rng.random() < 0.5 else b[k]) for k in a})

    def enumerate(self) -> Iterator[Arch]:
        raise NotImplementedError(f"space {self.name!r} is too large to enumerate")

    # --- networks -----------------------------------------------------------------------------
    @abstractmethod
    def build_supernet(self, num_classes: int = 10, **options: Any) -> "Supernet":
        """The weight-sharing supernet."""

    @abstractmethod
    def build_network(self, arch: Arch, num_classes: int = 10, **options: Any) -> nn.Module:
        """The stand-alone network of ``arch``."""

    @abstractmethod
    def decisions(self, arch: Arch) -> dict[str, Any]:
        """One decision per supernet edge label that runs ``arch`` in the supernet."""

    @abstractmethod
    def discretize(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        """Architecture weights per edge label -> Arch, with the space's published rule."""

    def network_options(self, supernet_options: Mapping[str, Any]) -> dict[str, Any]:
        """The supernet options that also shape the stand-alone network (its width and depth), so
        that a searched architecture is costed as the network it stands for. By default the
        options ``build_network`` accepts; a space whose search network differs from its
        evaluation network (DARTS: 8 cells of C=16 vs 20 of C=36) keeps none."""
        accepted = inspect.signature(self.build_network).parameters
        return {k: v for k, v in supernet_options.items() if k in accepted and k != "num_classes"}

    def cost(self, arch: Arch, num_classes: int = 10, input_size: tuple[int, ...] = (1, 3, 32, 32),
             **options: Any) -> dict[str, float]:
        """Parameters and FLOPs of the stand-alone network (see :func:`network_cost`)."""
        return network_cost(self.build_network(self.check(arch), num_classes, **options), input_size)

    def costs(self, archs: Iterable[Arch], num_classes: int = 10,
              input_size: tuple[int, ...] = (1, 3, 32, 32), **options: Any) -> Iterator[dict[str, float]]:
        """:meth:`cost` of many archs; spaces override it where costs add up over edges."""
        for arch in archs:
            yield self.cost(arch, num_classes, input_size, **options)


class Supernet(nn.Module):
    """A supernet: ``choices`` maps each choice label to its options, and ``forward(x,
    decisions)`` takes one decision per label.

    Options are candidate op names on cell edges (labels ``[cell/]node<-input``, see
    :mod:`supernets.labels`; cells of one type share labels) or plain values (kernel sizes,
    expand ratios, depths, channel counts, a resolution). Training modules treat every choice as
    opaque: one decision per label. ``edges`` is the cell-space view, the choices that are edges.
    A choice named by ``resolution_choice`` sets the input resolution instead of a module:
    :meth:`prepare_input` resizes the batch to it.
    """

    choices: dict[str, tuple[Any, ...]]
    resolution_choice: str | None = None

    @property
    def edges(self) -> dict[str, tuple[str, ...]]:
        """The choices that are cell edges: label -> candidate op names."""
        return {label: options for label, options in self.choices.items() if is_edge(label)}

    def prepare_input(self, x: torch.Tensor, decisions: Mapping[str, Any]) -> torch.Tensor:
        """The batch at the resolution the decisions choose (bilinear, as OFA resizes); unchanged
        for a supernet without a resolution choice or when the size already matches."""
        if self.resolution_choice is None:
            return x
        decision = decisions[self.resolution_choice]
        size = int(self.choices[self.resolution_choice][decision])
        if tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def check_decisions(self, decisions: Mapping[str, Any]) -> None:
        """Raise a KeyError naming missing or unknown labels."""
        missing = [k for k in self.choices if k not in decisions]
        unknown = [k for k in decisions if k not in self.choices]
        if missing or unknown:
            raise KeyError(f"decisions do not match the supernet choices: missing {missing}, "
                           f"unknown {unknown}; expected labels {list(self.choices)}")


def check_edge_weights(weights: Mapping[str, torch.Tensor], labels: Sequence[str],
                       candidates: Sequence[str]) -> None:
    """Raise KeyError (missing/unknown labels) or ValueError (wrong length) before a rule runs."""
    missing = [label for label in labels if label not in weights]
    unknown = [label for label in weights if label not in labels]
    if missing or unknown:
        raise KeyError(f"weights do not match the edges: missing {missing}, unknown {unknown}; "
                       f"expected labels {list(labels)}")
    for label in labels:
        if tuple(weights[label].shape) != (len(candidates),):
            raise ValueError(f"weights[{label!r}] has shape {tuple(weights[label].shape)}, expected "
                             f"({len(candidates)},) for {', '.join(candidates)}")


def count_parameters(module: nn.Module, exclude: str | None = None) -> int:
    """Number of parameters, leaving out those whose name contains ``exclude`` (e.g. 'auxiliary')."""
    return sum(p.numel() for n, p in module.named_parameters() if not (exclude and exclude in n))


@torch.no_grad()
def network_cost(network: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> dict[str, float]:
    """Params (auxiliary heads excluded, as DARTS reports) and FLOPs of one forward of one image.

    FLOPs come from ``torch.utils.flop_counter`` (a multiply-add counts as 2 FLOPs), measured on
    the module itself rather than from per-op formulas. ``flops`` is reported in that unit and
    ``macs`` = flops / 2, the unit most NAS papers print as "FLOPs".
    """
    was_training = network.training
    network.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        network(torch.zeros(input_size))
    network.train(was_training)
    flops = counter.get_total_flops() / input_size[0]
    return {"params": count_parameters(network, exclude="auxiliary"), "flops": float(flops),
            "macs": float(flops) / 2}
