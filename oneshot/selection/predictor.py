"""Once-for-All's predictor-guided search for a deployment budget (Cai et al., ICLR 2020).

After progressive shrinking, OFA does not score candidates with the supernet during the search:
it measures a sample of subnets once (each after BN recalibration), fits a small MLP from the
subnet's encoding to its accuracy, and runs an evolution whose fitness is the predicted accuracy
and whose every candidate is rejection-sampled until its efficiency (FLOPs or a latency lookup
table) meets the budget. As mit-han-lab/once-for-all ``ofa/nas/accuracy_predictor/`` and
``ofa/nas/search_algorithm/evolution.py`` do it:

* encoding (``MobileNetArchEncoder``): one-hot resolution, then per block (20) a one-hot kernel,
  then per block a one-hot expand ratio; blocks a depth skips are all zero;
* predictor (``AccuracyPredictor``): 3 x (Linear 400, ReLU), a bias-free Linear to one output,
  plus a frozen ``base_acc`` offset, the mean accuracy (accuracies in [0, 1]);
* dataset (``AccuracyDataset``): distinct subnets, each measured at every dataset resolution
  (OFA: 1,000 subnets at 128, 160, 192, 224), an 80/20 split, batches of 256; Adam, lr 1e-3,
  weight decay 1e-4 (the author in mit-han-lab/once-for-all#30);
* evolution (``EvolutionFinder``): population 100, 500 generations, the top 25% are the parents,
  50 children by mutation (resolution redrawn with p 0.5; per block kernel and expand redrawn
  together with p 0.1; per stage depth with p 0.1) and 50 by crossover (each gene from either of
  two random parents); parents and children form the next population.

Where this differs: subnets are distinct as networks (the skipped blocks' values do not count;
OFA's ids include them); ``base_acc`` is the training split's mean (OFA's loader takes the mean of
all samples, validation included); the children of the last generation are ranked too (OFA
predicts them and stops); the evolution searches the resolutions the predictor was trained on
(OFA: its encoder's, the same); a proposal that fails the budget ``sample_tries`` times in a row
ends with an error (OFA tries forever). Files in ``directory``: the measured dataset (resumable),
``predictor.pt``, ``predictor_search.json`` and ``predictor_search.png``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from oneshot.files import atomic_write_json
from oneshot.latency import LatencyTable
from oneshot.selection.evolution import COST_KEYS, Constraint, parse_constraints
from oneshot.selection.evolve import costing, pareto_front, save_figure, scorer
from supernets import Arch
from supernets.ofa_mbv3 import (MAX_DEPTH, NUM_STAGES, RESOLUTION, block_positions, depth_label, expand_label,
                                kernel_label)

SPACE = "ofa-mbv3"
DATASET_FILE = "predictor_dataset.json"
PREDICTOR_FILE = "predictor.pt"
SEARCH_FILE = "predictor_search.json"
PLOT_FILE = "predictor_search.png"
NUM_BLOCKS = NUM_STAGES * MAX_DEPTH
Values = Mapping[str, int]
DEPTH_LABELS = [depth_label(s) for s in range(1, NUM_STAGES + 1)]
STAGE_BLOCKS = [[(kernel_label(s, b), expand_label(s, b)) for b in range(1, MAX_DEPTH + 1)]
                for s in range(1, NUM_STAGES + 1)]  # per stage, (kernel, expand) labels of its blocks


def enabled_choices(model: Any) -> dict[str, tuple[int, ...]]:
    """The values the supernet's training enabled (OFA's last phase), else all it serves."""
    choices = getattr(model, "enabled_choices", None) or model.supernet.choices
    return {label: tuple(sorted(int(v) for v in values)) for label, values in choices.items()}


def evenly_spaced(values: Sequence[int], count: int = 4) -> tuple[int, ...]:
    """``count`` of ``values`` from the smallest to the largest: OFA's dataset resolutions 128,
    160, 192, 224 of its 25 sizes 128..224."""
    values = sorted(values)
    if len(values) <= count:
        return tuple(values)
    return tuple(values[round(i * (len(values) - 1) / (count - 1))] for i in range(count))


def active_key(values: Values) -> tuple[int, ...]:
    """What the network of ``values`` is: resolution, depths and the active blocks' kernel and
    expand ratio (the skipped blocks' values do nothing)."""
    key = [int(values[RESOLUTION])]
    for depth_name, blocks in zip(DEPTH_LABELS, STAGE_BLOCKS):
        depth = int(values[depth_name])
        key.append(depth)
        for kernel, expand in blocks[:depth]:
            key += (int(values[kernel]), int(values[expand]))
    return tuple(key)


# --- encoding -------------------------------------------------------------------------------------

class ArchEncoder:
    """OFA's ``MobileNetArchEncoder`` over ``choices`` (label -> allowed values of the ofa-mbv3
    space): [one-hot resolution | 20 x one-hot kernel | 20 x one-hot expand], zeros for blocks a
    depth skips."""

    def __init__(self, choices: Mapping[str, Iterable[int]]):
        labels = [RESOLUTION, *DEPTH_LABELS,
                  *(f(s, b) for f in (kernel_label, expand_label) for s, b in block_positions())]
        given = {label: tuple(sorted(int(v) for v in values)) for label, values in choices.items()}
        missing = [label for label in labels if not given.get(label)] + sorted(set(given) - set(labels))
        if missing:
            raise ValueError(f"the encoder takes the choices of exactly the ofa-mbv3 labels; missing, empty or "
                             f"unknown: {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        self.choices = {label: given[label] for label in labels}  # the space's label order
        self.resolutions = self.choices[RESOLUTION]
        self.kernel_sizes = tuple(sorted({v for s, b in block_positions() for v in self.choices[kernel_label(s, b)]}))
        self.expand_ratios = tuple(sorted({v for s, b in block_positions() for v in self.choices[expand_label(s, b)]}))
        self._resolution = {r: i for i, r in enumerate(self.resolutions)}
        self._kernel = {k: i for i, k in enumerate(self.kernel_sizes)}
        self._expand = {e: i for i, e in enumerate(self.expand_ratios)}
        self.kernel_offset = len(self.resolutions)
        self.expand_offset = self.kernel_offset + NUM_BLOCKS * len(self.kernel_sizes)
        self.n_features = self.expand_offset + NUM_BLOCKS * len(self.expand_ratios)

    def to_json(self) -> dict[str, list[int]]:
        return {label: list(values) for label, values in self.choices.items()}

    def check(self, arch: Values) -> None:
        """ValueError naming the first value of ``arch`` (resolution, depths, active blocks)
        outside the choices."""
        labels = [RESOLUTION]
        for s in range(1, NUM_STAGES + 1):
            labels.append(depth_label(s))
            depth = int(arch[depth_label(s)])
            labels += [f(s, b) for b in range(1, min(depth, MAX_DEPTH) + 1) for f in (kernel_label, expand_label)]
        for label in labels:
            if arch[label] not in self.choices[label]:
                raise ValueError(f"{label} = {arch[label]} is outside the enabled choices "
                                 f"({', '.join(map(str, self.choices[label]))}) the predictor was built for: "
                                 "choose an architecture within them")

    def _indices(self, arch: Values) -> list[int]:
        values = dict(arch)
        self.check(values)
        hot = [self._resolution[values[RESOLUTION]]]
        n_kernels, n_expands = len(self.kernel_sizes), len(self.expand_ratios)
        for stage, (depth_name, blocks) in enumerate(zip(DEPTH_LABELS, STAGE_BLOCKS)):
            for b, (kernel, expand) in enumerate(blocks[:values[depth_name]]):
                i = stage * MAX_DEPTH + b
                hot.append(self.kernel_offset + i * n_kernels + self._kernel[values[kernel]])
                hot.append(self.expand_offset + i * n_expands + self._expand[values[expand]])
        return hot

    def encode(self, arch: Values) -> torch.Tensor:
        """The feature vector (float32, ``n_features``) of one architecture."""
        return self.encode_many([arch])[0]

    def encode_many(self, archs: Sequence[Values]) -> torch.Tensor:
        features = torch.zeros(len(archs), self.n_features)
        for row, arch in enumerate(archs):
            features[row, self._indices(arch)] = 1.0
        return features

    def decode(self, feature: torch.Tensor) -> Arch:
        """The architecture of a feature vector; skipped blocks take each label's smallest value."""
        feature = torch.as_tensor(feature).detach().float().cpu().flatten()
        if feature.numel() != self.n_features:
            raise ValueError(f"a feature of {feature.numel()} values; this encoder makes {self.n_features}")
        values: dict[str, int] = {RESOLUTION: self.resolutions[int(feature[:self.kernel_offset].argmax())]}
        blocks: dict[str, int] = {}
        for s in range(1, NUM_STAGES + 1):
            depth = 0
            for b in range(1, MAX_DEPTH + 1):
                i = (s - 1) * MAX_DEPTH + (b - 1)
                k = feature[self.kernel_offset + i * len(self.kernel_sizes):][:len(self.kernel_sizes)]
                e = feature[self.expand_offset + i * len(self.expand_ratios):][:len(self.expand_ratios)]
                if k.max() > 0.5:
                    if depth != b - 1:
                        raise ValueError(f"stage {s} has block {b} without block {b - 1}: not an encoding")
                    depth = b
                    blocks[kernel_label(s, b)] = self.kernel_sizes[int(k.argmax())]
                    blocks[expand_label(s, b)] = self.expand_ratios[int(e.argmax())]
                else:
                    blocks[kernel_label(s, b)] = self.choices[kernel_label(s, b)][0]
                    blocks[expand_label(s, b)] = self.choices[expand_label(s, b)][0]
            if depth not in self.choices[depth_label(s)]:
                raise ValueError(f"stage {s} has {depth} blocks, not one of the depths "
                                 f"{self.choices[depth_label(s)]}: not an encoding")
            values[depth_label(s)] = depth
        values.update(blocks)
        return Arch(SPACE, {label: values[label] for label in self.choices})

    def canonical(self, arch: Values) -> dict[str, int]:
        """``arch`` with every skipped block at its labels' smallest values (what :meth:`decode`
        gives back), in the choices' label order."""
        values = {label: int(arch[label]) for label in self.choices}
        for s, b in block_positions():
            if b > values[depth_label(s)]:
                values[kernel_label(s, b)] = self.choices[kernel_label(s, b)][0]
                values[expand_label(s, b)] = self.choices[expand_label(s, b)][0]
        return values

    def subnet_count(self) -> int:
        """Distinct networks within the choices at one resolution."""
        total = 1
        for s in range(1, NUM_STAGES + 1):
            per_stage = 0
            for depth in self.choices[depth_label(s)]:
                blocks = 1
                for b in range(1, depth + 1):
                    blocks *= len(self.choices[kernel_label(s, b)]) * len(self.choices[expand_label(s, b)])
                per_stage += blocks
            total *= per_stage
        return total


# --- the predictor ----------------------------------------------------------------------------------

class AccuracyPredictor(nn.Module):
    """OFA's accuracy predictor: an MLP from the encoding to accuracy in [0, 1], its output added
    to a frozen ``base_acc`` (the mean accuracy: the author's "bias = average accuracy", which
    keeps training stable)."""

    def __init__(self, n_features: int, hidden: int = 400, layers: int = 3):
        super().__init__()
        stack: list[nn.Module] = []
        for i in range(layers):
            stack += [nn.Linear(n_features if i == 0 else hidden, hidden), nn.ReLU()]
        stack.append(nn.Linear(hidden if layers else n_features, 1, bias=False))
        self.layers = nn.Sequential(*stack)
        self.register_buffer("base_acc", torch.zeros(()))  # a buffer: no optimizer ever moves it
        self.n_features, self.hidden, self.num_layers = n_features, hidden, layers

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1) + self.base_acc


@dataclass(frozen=True)
class PredictorTraining:
    """How the predictor is fitted (OFA's loader: batches of 256; #30: Adam 1e-3, decay 1e-4)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 400
    layers: int = 3
    seed: int = 0


def rmse(predictor: AccuracyPredictor, features: torch.Tensor, targets: torch.Tensor) -> float:
    """Root mean squared error in accuracy points (0..100)."""
    if len(targets) == 0:
        return float("nan")
    with torch.no_grad():
        return 100.0 * float(((predictor(features) - targets) ** 2).mean().sqrt())


def train_predictor(features: torch.Tensor, targets: torch.Tensor,
                    training: PredictorTraining = PredictorTraining()) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """Fit a predictor on a seeded 80% of ``(features, targets)`` (accuracies in [0, 1]) and
    report the RMSE on the other 20% (OFA ``build_acc_data_loader``'s split)."""
    count = len(targets)
    if count < 5:
        raise ValueError(f"{count} measured architectures are too few to fit and validate a predictor: "
                         "give predictor_samples of at least 5")
    if float(targets.min()) < 0.0 or float(targets.max()) > 1.0:
        raise ValueError("predictor targets are accuracies in [0, 1] (the author: not 0..100)")
    with torch.inference_mode(False), torch.enable_grad():  # a selection may run inside Lightning's validation
        return _fit(features.clone(), targets.clone(), training)


def _fit(features: torch.Tensor, targets: torch.Tensor,
         training: PredictorTraining) -> tuple[AccuracyPredictor, dict[str, Any]]:
    count = len(targets)
    generator = torch.Generator().manual_seed(training.seed)
    order = torch.randperm(count, generator=generator)
    split = count // 5 * 4
    x_train, y_train = features[order[:split]].float(), targets[order[:split]].float()
    x_val, y_val = features[order[split:]].float(), targets[order[split:]].float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        predictor = AccuracyPredictor(features.shape[1], training.hidden, training.layers)
    predictor.base_acc.fill_(float(y_train.mean()))
    optimizer = torch.optim.Adam(predictor.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    for _ in range(training.epochs):
        for batch in torch.randperm(split, generator=generator).split(training.batch_size):
            loss = ((predictor(x_train[batch]) - y_train[batch]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    predictor.eval()
    report = {"train_size": split, "val_size": count - split, "base_acc": float(predictor.base_acc),
              "train_rmse": rmse(predictor, x_train, y_train), "val_rmse": rmse(predictor, x_val, y_val),
              **asdict(training)}
    return predictor, report


def save_predictor(path: str | os.PathLike, predictor: AccuracyPredictor, encoder: ArchEncoder,
                   report: Mapping[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": predictor.state_dict(), "encoder_choices": encoder.to_json(),
                "hidden": predictor.hidden, "layers": predictor.num_layers, "report": dict(report)}, path)


def load_predictor(path: str | os.PathLike) -> tuple[ArchEncoder, AccuracyPredictor]:
    """The encoder and predictor :func:`save_predictor` wrote."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or "encoder_choices" not in record:
        raise ValueError(f"{path} is not a predictor file of the predictor selection (no encoder_choices)")
    encoder = ArchEncoder(record["encoder_choices"])
    predictor = AccuracyPredictor(encoder.n_features, record["hidden"], record["layers"])
    predictor.load_state_dict(record["state_dict"])
    return encoder, predictor.eval()


def predict_accuracy(predictor: AccuracyPredictor, encoder: ArchEncoder, archs: Sequence[Values]) -> list[float]:
    with torch.no_grad():
        return [float(a) for a in predictor(encoder.encode_many(archs))]


# --- the measured dataset -----------------------------------------------------------------------------

def sample_subnets(encoder: ArchEncoder, count: int, rng: random.Random) -> list[dict[str, int]]:
    """``count`` distinct networks (OFA ``sample_active_subnet``, canonical skipped blocks), at
    the first resolution; fewer when the choices hold fewer."""
    count = min(count, encoder.subnet_count())
    subnets: dict[tuple[int, ...], dict[str, int]] = {}
    while len(subnets) < count:
        values = {label: rng.choice(options) for label, options in encoder.choices.items() if label != RESOLUTION}
        values = encoder.canonical({RESOLUTION: encoder.resolutions[0], **values})
        subnets.setdefault(active_key(values), values)
    return list(subnets.values())


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of the weights' sums: a dataset measured on other weights is not reused."""
    digest = hashlib.sha1()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                t = tensor.double()
                digest.update(f"{name}:{float(t.sum()):.9g}:{float(t.abs().sum()):.9g};".encode())
    return digest.hexdigest()[:16]


def measure_dataset(archs: Sequence[Arch], evaluate: Callable[[Arch], tuple[float, float]],
                    format_arch: Callable[[Arch], str],
                    context: Mapping[str, Any], path: Path | None, progress: bool) -> list[dict[str, Any]]:
    """``evaluate`` every arch, keeping what ``path`` already holds for the same ``context`` and
    saving as it goes (an interrupted build continues where it stopped)."""
    measured: dict[str, list[float]] = {}
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("context") != dict(context):
            changed = [k for k in context if saved.get("context", {}).get(k) != context[k]]
            raise ValueError(f"{path} was measured with other {', '.join(changed) or 'settings'}: delete it, or "
                             "use another directory, or rerun with the same options and weights")
        measured = {k: list(v) for k, v in saved["measured"].items()}
    keys = [format_arch(a) for a in archs]
    todo = [(k, a) for k, a in zip(keys, archs) if k not in measured]
    bar = _bar(progress, len(archs), "measuring subnets", initial=len(archs) - len(todo))
    last_save = time.monotonic()

    def save() -> None:
        if path is not None:
            atomic_write_json(path, {"space": SPACE, "context": dict(context), "measured": measured})

    try:
        for key, arch in todo:
            accuracy, loss = evaluate(arch)
            measured[key] = [float(accuracy), float(loss)]
            if bar:
                bar.update(1)
                bar.set_postfix(accuracy=f"{accuracy:.4f}")
            if time.monotonic() - last_save > 5.0:
                save()
                last_save = time.monotonic()
    finally:
        if todo:
            save()
        if bar:
            bar.close()
    return [{"arch": k, "accuracy": measured[k][0], "loss": measured[k][1]} for k in keys]


def _bar(progress: bool, total: int, description: str, initial: int = 0) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=description, leave=False, disable=None)


# --- budgets --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget(Constraint):
    """A :class:`~oneshot.selection.evolution.Constraint` that also knows ``latency`` (ms, from a
    latency lookup table)."""

    @property
    def cost_key(self) -> str:
        return "latency" if self.key == "latency" else COST_KEYS[self.key]


_KEY = re.compile(r"^\s*([A-Za-z_]+)")


def parse_budgets(texts: Sequence[str]) -> list[Budget]:
    """``["flops<=300e6"]``, ``["latency<=20"]`` (ms) -> budgets; the evolution strategy's syntax."""
    budgets = []
    for text in texts:
        for part in str(text).split(","):
            if not part.strip():
                continue
            match = _KEY.match(part)
            key = match.group(1) if match else ""
            if key and key != "latency" and key not in COST_KEYS:
                raise ValueError(f"constraint key {key!r} is unknown; accepted: {', '.join(COST_KEYS)}, latency "
                                 "(flops and macs are multiply-adds, latency is ms from a latency_table)")
            spelled = part.replace("latency", "params", 1) if key == "latency" else part
            try:
                (parsed,) = parse_constraints([spelled])
            except ValueError as error:
                raise ValueError(str(error).replace(spelled.strip(), part.strip())) from None
            budgets.append(Budget(key, parsed.op, parsed.limit))
    return budgets


# --- the evolution ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FinderSettings:
    """OFA ``EvolutionFinder``'s defaults."""

    population: int = 100              # population_size
    generations: int = 500             # max_time_budget
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1           # arch_mutate_prob: per block (kernel and expand together), per stage depth
    resolution_mutate_prob: float = 0.5
    sample_tries: int = 10_000         # OFA: unbounded

    def check(self) -> None:
        if self.population < 1 or self.generations < 0 or self.sample_tries < 1:
            raise ValueError(f"population={self.population}, generations={self.generations}, sample_tries="
                             f"{self.sample_tries}: population and sample_tries at least 1, generations at least 0")
        for name in ("parent_ratio", "mutation_ratio", "mutate_prob", "resolution_mutate_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: a fraction between 0 and 1")
        if round(self.parent_ratio * self.population) < 1:
            raise ValueError(f"parent_ratio={self.parent_ratio} of population={self.population} leaves no parent")


Predict = Callable[[Sequence[Values]], Sequence[float]]
CostOf = Callable[[Values], Mapping[str, float]]


class EvolutionFinder:
    """OFA's evolution under budgets: fitness is ``predict``; every random, mutated or crossed
    proposal is redrawn until ``cost`` meets every budget. Genes are label -> value dicts within
    ``choices``; ``candidates`` keeps every proposal that met the budgets (per network)."""

    def __init__(self, choices: Mapping[str, Sequence[int]], predict: Predict, cost: CostOf,
                 budgets: Sequence[Constraint] = (), settings: FinderSettings = FinderSettings(), seed: int = 0):
        settings.check()
        self.choices = {label: tuple(values) for label, values in choices.items()}
        self.predict, self.cost_fn, self.budgets, self.settings = predict, cost, list(budgets), settings
        self.rng = random.Random(seed)
        self.smallest_rejected: dict[str, float] = {}
        self.candidates: dict[tuple[int, ...], dict[str, Any]] = {}
        self._costs: dict[tuple[int, ...], dict[str, float]] = {}

    def cost(self, values: Values) -> dict[str, float]:
        key = active_key(values)
        if key not in self._costs:
            self._costs[key] = {k: float(v) for k, v in self.cost_fn(values).items()}
        return self._costs[key]

    def allowed(self, values: Values) -> bool:
        cost = self.cost(values)
        if all(b.allows(cost) for b in self.budgets):
            return True
        for b in self.budgets:
            seen = cost[b.cost_key]
            self.smallest_rejected[b.key] = min(seen, self.smallest_rejected.get(b.key, seen))
        return False

    def _until_allowed(self, propose: Callable[[], dict[str, int]], what: str) -> dict[str, int]:
        for _ in range(self.settings.sample_tries):
            values = propose()
            if self.allowed(values):
                return values
        seen = ", ".join(f"{k} {v:.4g}" for k, v in self.smallest_rejected.items())
        raise ValueError(f"no {what} within the enabled choices met {', '.join(map(str, self.budgets))} in "
                         f"{self.settings.sample_tries:,} tries (smallest seen: {seen}): relax the constraint")

    # --- proposals (OFA MobileNetArchEncoder.random_sample_arch, mutate_*, crossover_sample) ---
    def random_sample(self) -> dict[str, int]:
        return self._until_allowed(lambda: {label: self.rng.choice(v) for label, v in self.choices.items()},
                                   "random subnet")

    def _mutated(self, parent: Values) -> dict[str, int]:
        rng, p = self.rng, self.settings.mutate_prob
        child = dict(parent)
        if rng.random() < self.settings.resolution_mutate_prob:
            child[RESOLUTION] = rng.choice(self.choices[RESOLUTION])
        for blocks in STAGE_BLOCKS:
            for kernel, expand in blocks:
                if rng.random() < p:
                    child[kernel] = rng.choice(self.choices[kernel])
                    child[expand] = rng.choice(self.choices[expand])
        for depth_name in DEPTH_LABELS:
            if rng.random() < p:
                child[depth_name] = rng.choice(self.choices[depth_name])
        return child

    def mutate(self, parent: Values) -> dict[str, int]:
        return self._until_allowed(lambda: self._mutated(parent), "mutation")

    def crossover(self, first: Values, second: Values) -> dict[str, int]:
        return self._until_allowed(
            lambda: {label: self.rng.choice((first[label], second[label])) for label in self.choices}, "crossover")

    def smallest_check(self) -> None:
        """An upper budget the smallest subnet already breaks fails at once, not after the tries."""
        smallest = {label: values[0] for label, values in self.choices.items()}
        cost = self.cost(smallest)
        for b in self.budgets:
            if b.op in ("<=", "<") and not b.allows(cost):
                raise ValueError(f"{b} cannot be met: the smallest subnet within the enabled choices has "
                                 f"{b.key} {cost[b.cost_key]:.4g}; relax the constraint")

    # --- the search ---------------------------------------------------------------------------
    def _scored(self, population: list[dict[str, int]]) -> list[tuple[float, dict[str, int]]]:
        scores = [float(a) for a in self.predict(population)]
        for accuracy, values in zip(scores, population):
            self.candidates.setdefault(active_key(values), {"predicted_accuracy": accuracy, **self.cost(values)})
        return list(zip(scores, population))

    def run(self, progress: bool = False) -> dict[str, Any]:
        """The best member ever ranked, the best per generation and the final population."""
        s, rng = self.settings, self.rng
        self.smallest_check()
        mutants = int(round(s.mutation_ratio * s.population))
        parents_size = int(round(s.parent_ratio * s.population))
        population = self._scored([self.random_sample() for _ in range(s.population)])
        history: list[dict[str, Any]] = []
        best: tuple[float, dict[str, int]] | None = None
        bar = _bar(progress, s.generations, "predictor search")
        try:
            for generation in range(s.generations + 1):
                parents = sorted(population, key=lambda member: member[0], reverse=True)[:parents_size]
                if best is None or parents[0][0] > best[0]:
                    best = parents[0]
                history.append({"generation": generation, "member": best})
                if generation == s.generations:
                    break
                children = [self.mutate(rng.choice(parents)[1]) for _ in range(mutants)]
                children += [self.crossover(rng.choice(parents)[1], rng.choice(parents)[1])
                             for _ in range(s.population - mutants)]
                population = parents + self._scored(children)
                if bar:
                    bar.update(1)
                    bar.set_postfix(predicted=f"{best[0]:.4f}")
        finally:
            if bar:
                bar.close()
        best_accuracy, best_values = history[-1]["member"]
        return {"best": best_values, "predicted_accuracy": best_accuracy, "population": population,
                "history": [{"generation": h["generation"], "predicted_accuracy": h["member"][0],
                             "values": h["member"][1]} for h in history]}


# --- the strategy ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeasureSettings:
    """How subnets are measured (OFA: 2,000 recalibration images in batches of 200, 10,000
    validation images)."""

    bn_mode: str = "recalibrate"
    bn_batches: int = 10
    bn_batch_size: int = 200
    val_images: int = 10_000
    val_batch_size: int = 200


def dataset_resolutions(choices: Mapping[str, Sequence[int]], resolutions: Sequence[int] | None) -> tuple[int, ...]:
    enabled = tuple(choices[RESOLUTION])
    if resolutions is None:
        return evenly_spaced(enabled)
    outside = sorted(set(int(r) for r in resolutions) - set(enabled))
    if outside or not resolutions:
        raise ValueError(f"predictor_resolutions {list(resolutions)}: give some of the enabled resolutions "
                         f"{', '.join(map(str, enabled))}" + (f" ({outside} are not)" if outside else ""))
    return tuple(sorted(set(int(r) for r in resolutions)))


def run_predictor_search(model: Any, datamodule: Any, constraints: Sequence[str] = (),
                         latency_table: str | os.PathLike | None = None, seed: int = 0, samples: int = 1000,
                         resolutions: Sequence[int] | None = None, training: PredictorTraining = PredictorTraining(),
                         finder: FinderSettings = FinderSettings(), measure: MeasureSettings = MeasureSettings(),
                         directory: str | os.PathLike | None = None,
                         progress: bool = True) -> tuple[Arch, list[dict[str, Any]], dict[str, Any]]:
    """Measure, fit, search, measure the winner: (best arch, the measured dataset, settings)."""
    if model.space.name != SPACE:
        raise ValueError(f"selection predictor encodes {SPACE} subnets; this supernet is {model.space.name}: "
                         "use evolution or best_of_n")
    if samples < 1:
        raise ValueError(f"predictor_samples={samples}: at least 1 subnet")
    budgets = parse_budgets(constraints)
    finder.check()
    table = None
    choices = enabled_choices(model)
    encoder = ArchEncoder({**choices, RESOLUTION: dataset_resolutions(choices, resolutions)})
    hp = model.hparams
    if latency_table is not None:
        table = LatencyTable.load(latency_table)
        table.check(SPACE, model.space.network_options(dict(hp.space_options or {})),
                    num_classes=int(hp.num_classes), in_channels=int(hp.in_channels), choices=encoder.choices)
    if any(b.key == "latency" for b in budgets) and table is None:
        raise ValueError("a latency constraint needs a latency table: give latency_table=FILE "
                         "(measure one with `oneshot latency`)")
    folder = Path(directory) if directory is not None else None
    evaluate, protocol = scorer(model, datamodule, measure.bn_mode, measure.bn_batches, measure.bn_batch_size,
                                measure.val_images, measure.val_batch_size, seed)
    low = encoder.resolutions[0]
    cost_of_arch, cost_protocol = costing(model, (low, low))
    cost_protocol["input_size"] = "each subnet at its own resolution"

    def cost(values: Values) -> dict[str, float]:
        found = dict(cost_of_arch(Arch(SPACE, values)))
        if table is not None:
            found["latency"] = table.predict(values)
        return found

    was_training = model.training
    try:
        # 1. the dataset
        subnets = sample_subnets(encoder, samples, random.Random(seed))
        archs = [Arch(SPACE, {**values, RESOLUTION: r}) for values in subnets for r in encoder.resolutions]
        context = {"scoring": protocol, "choices": encoder.to_json(), "seed": seed,
                   "weights": weights_fingerprint(model.supernet)}
        dataset = measure_dataset(archs, evaluate, model.space.format, context,
                                  folder / DATASET_FILE if folder else None, progress)
        # 2. the predictor
        features = encoder.encode_many(archs)
        targets = torch.tensor([record["accuracy"] for record in dataset])
        predictor, report = train_predictor(features, targets, training)
        if folder is not None:
            save_predictor(folder / PREDICTOR_FILE, predictor, encoder, report)
        if progress:
            print(f"predictor: validation RMSE {report['val_rmse']:.3f} accuracy points "
                  f"({report['train_size']} training, {report['val_size']} validation subnets)", flush=True)
        # 3. the evolution
        search = EvolutionFinder(encoder.choices, lambda archs: predict_accuracy(predictor, encoder, archs), cost,
                                 budgets, finder, seed)
        result = search.run(progress)
        best = Arch(SPACE, encoder.canonical(result["best"]))
        # 4. the winner, measured once
        measured = {record["arch"]: record for record in dataset}.get(model.space.format(best))
        accuracy, loss = (measured["accuracy"], measured["loss"]) if measured else evaluate(best)
    finally:
        model.train(was_training)
    best_record = {"arch": model.space.format(best), "predicted_accuracy": result["predicted_accuracy"],
                   "measured_accuracy": float(accuracy), "measured_loss": float(loss), **search.cost(result["best"])}
    settings = {
        "predictor_rmse": report["val_rmse"], "predicted_accuracy": best_record["predicted_accuracy"],
        "measured_accuracy": best_record["measured_accuracy"], "cost": search.cost(result["best"]),
        "constraints": [str(b) for b in budgets], "seed": seed,
        "predictor": {**report, "subnets": len(subnets), "resolutions": list(encoder.resolutions),
                      "measurements": len(dataset), "features": encoder.n_features},
        "search": asdict(finder), "candidates": len(search.candidates), "scoring": protocol,
        "cost_model": cost_protocol,
        "latency_table": None if table is None else {"path": table.path, "device": table.device},
    }
    if folder is not None:
        history = [{"generation": h["generation"], "predicted_accuracy": h["predicted_accuracy"],
                    "arch": model.space.format(Arch(SPACE, encoder.canonical(h["values"])))}
                   for h in result["history"]]
        atomic_write_json(folder / SEARCH_FILE, {"best": best_record, "settings": settings, "history": history})
        plot_predicted_front(list(search.candidates.values()), best_record, budgets, folder / PLOT_FILE)
    return best, dataset, settings


# --- the plot ---------------------------------------------------------------------------------------------

_AXES = {"macs": ("multiply-adds (M)", 1e-6), "params": ("parameters (M)", 1e-6), "latency": ("latency (ms)", 1.0)}


def plot_predicted_front(candidates: Sequence[Mapping[str, Any]], best: Mapping[str, Any],
                         budgets: Sequence[Constraint], path: Path) -> Path:
    """Predicted accuracy vs the first budget's cost (multiply-adds without one) of every
    candidate the search proposed, the Pareto front, the budget line and the chosen subnet."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = budgets[0].cost_key if budgets else "macs"
    label, scale = _AXES[metric]
    points = [(c[metric] * scale, 100 * c["predicted_accuracy"]) for c in candidates]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=6, alpha=0.35, color="tab:blue",
               label=f"candidates ({len(points)})")
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", lw=1.2, marker="o",
            ms=3, label="Pareto front")
    for b in budgets:
        if b.cost_key == metric:
            ax.axvline(b.limit * scale, color="gray", ls="--", lw=1, label=str(b))
    ax.scatter([best[metric] * scale], [100 * best["predicted_accuracy"]], marker="*", s=160, color="tab:orange",
               edgecolor="black", zorder=3, label=f"chosen (measured {100 * best['measured_accuracy']:.2f}%)")
    ax.set_xlabel(label)
    ax.set_ylabel("predicted accuracy (%)")
    ax.set_title(f"{SPACE}: predictor-guided search")
    return save_figure(fig, ax, path)

