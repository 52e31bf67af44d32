"""DrNAS: Dirichlet neural architecture search (Chen, Wang, Cheng, Tang, Hsieh, ICLR 2021).

Reference: xiangning-chen/DrNAS@f2caa4d ``utils.py`` (``process_step_matrix``: the Dirichlet
sample), ``DARTS-space/model_search.py`` / ``201-space/search_model.py`` (``_get_kl_reg``,
``genotype``), ``architect.py`` (the Adam and its L2 term) and ``201-space/train_search.py``
(the NB201 defaults), ``DARTS-space/train_search.py`` and ``net2wider.py`` (the progressive
schedule).

What differs from first-order DARTS: every forward (weight step, architecture step, validation)
draws the edge weights from Dirichlet(elu(alpha) + 1), one sample per label shared by the cells
of a type, and the architecture gradient flows through the sample (pathwise, ``rsample``). The
regulariser is ``l2`` (the code's default: Adam weight decay ``reg_scale`` on alpha) or ``kl``
(``reg_scale`` times the KL divergence to Dirichlet(1), summed over edges, added to the
architecture loss). The export is the space's rule on softmax(alpha), as the code derives it.

The DARTS-space search is progressive: two runs of this module (``stage`` 0 and 1) of 25 epochs
each. Stage 0 sends C/6 channels through the 7 candidates of every edge (DrNAS's PRIMITIVES
comment out ``none``); stage 1 keeps each edge's 4 candidates of largest alpha, with their alpha
values, and sends C/4 channels through them: ``widen_from`` names stage 0's checkpoint, whose
weights are widened by Net2Wider (:mod:`ops.net2wider`), SGD momentum with them, the
architecture Adam's state kept for the surviving entries and the cosine continued where stage 0
left it (``cosine_t_max`` is the whole 50 epochs in both). Each stage freezes alpha for its
first 10 epochs (the code's within-stage ``if epoch >= 10``). One deviation: the code keeps
pruned alphas (zeroed, masked out of the sample) inside its KL term, which the ``kl`` regulariser
here leaves out; the default ``l2`` is unaffected, and so is the sample (a renormalised
sub-vector of a Dirichlet is the Dirichlet of the kept concentrations).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from oneshot.algorithms.base import all_reduce_mean, rank_shared_seed, with_space_option
from oneshot.algorithms.darts import DartsSearch
from oneshot.checkpoints import read_checkpoint
from ops.net2wider import supernet_plan, widen, widen_state
from supernets.darts import EDGE_LABELS, PRIMITIVES, candidates_per_cell, candidates_per_label

REGULARISERS = ("l2", "kl")
STAGE_PARTIAL_CHANNELS = (6, 4)  # train_search.py ks = [6, 4]
KEEP_CANDIDATES = 4  # num_keeps = [7, 4]: stage 0 searches all 7, stage 1 keeps 4
SEARCHED = tuple(op for op in PRIMITIVES if op != "none")  # DrNAS genotypes.py: '# none' commented out


def top_candidates(candidates: Sequence[str], alpha: Sequence[float], keep: int) -> list[str]:
    """``utils.prune``: the ``keep`` candidates of largest raw alpha (first on ties), in space order."""
    order = sorted(range(len(candidates)), key=lambda k: (-float(alpha[k]), k))[:keep]
    return [candidates[k] for k in sorted(order)]


class DrnasSearch(DartsSearch):
    """DARTS with Dirichlet-sampled architecture weights.

    Args:
        reg_type: ``l2`` (``--reg_type`` default: Adam weight decay ``reg_scale``, in place of
            ``arch_weight_decay``) or ``kl`` (no decay).
        reg_scale: the regulariser's weight (``--reg_scale`` 1e-3).
        partial_channels: K of the partial-channel edges (1: none, NB201's plain search; the
            DARTS-space search starts at 6).
        arch_warmup_epochs: epochs of weight steps only, per stage (DARTS space: 10; NB201 plain: 0).
        stage: None for a single run; 0 or 1 for the DARTS-space progressive search, whose stage
            sets ``partial_channels`` and the candidates.
        widen_from: stage 0's checkpoint, which stage 1 starts from (ignored once
            ``space_options`` holds ``edge_candidates``: a resumed or reloaded stage 1).
        stage_partial_channels: K per stage (6, 4).
        keep_candidates: the candidates per edge that stage 1 keeps (4; stage 0 has all 7).
        stage_zero_epochs: the epochs stage 0 ran, where stage 1's cosine continues (None: read
            from ``widen_from``).
        **kwargs: the settings of :class:`~oneshot.algorithms.darts.DartsSearch` (first order only).
    """

    def __init__(self, *args: Any, reg_type: Literal["l2", "kl"] = "l2", reg_scale: float = 1e-3,
                 partial_channels: int = 1, arch_warmup_epochs: int = 0, stage: int | None = None,
                 widen_from: str | None = None, stage_partial_channels: tuple[int, int] = STAGE_PARTIAL_CHANNELS,
                 keep_candidates: int = KEEP_CANDIDATES, stage_zero_epochs: int | None = None, **kwargs: Any):
        if reg_type not in REGULARISERS:
            raise ValueError(f"reg_type={reg_type!r}; accepted: {', '.join(REGULARISERS)}")
        if stage is not None:
            args, kwargs = _stage_options(args, kwargs, stage, widen_from, partial_channels,
                                          tuple(stage_partial_channels), keep_candidates)
        elif partial_channels > 1:
            args, kwargs = with_space_option(args, kwargs, "partial_channels", partial_channels)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if self.hparams.unrolled:
            raise ValueError("DrNAS's architecture step is first order here (--unrolled False); set unrolled: false")
        if arch_warmup_epochs < 0:
            raise ValueError(f"arch_warmup_epochs={arch_warmup_epochs}: use 0 or more epochs")
        if stage is not None:  # the effective options, so a checkpoint rebuilds without widen_from
            self.hparams["space_options"] = dict(self.space_options)
        if stage == 1 and widen_from and stage_zero_epochs is None:
            self.hparams["stage_zero_epochs"] = int(_stage_zero(widen_from)["epoch"]) + 1

    def arch_decay(self) -> float:
        """architect.py: the Adam's weight decay is ``reg_scale`` for l2 and 0 for kl; it replaces
        ``arch_weight_decay``, which DrNAS does not read."""
        return float(self.hparams.reg_scale) if self.hparams.reg_type == "l2" else 0.0

    def configure_optimizers(self):
        optimizers, schedules = super().configure_optimizers()
        for group in optimizers[1].param_groups:
            group["weight_decay"] = self.arch_decay()
        return optimizers, schedules

    def concentrations(self) -> dict[str, torch.Tensor]:
        """elu(alpha) + 1 per label, over the candidates that are not excluded."""
        out = {}
        for label, alpha in self.alphas.items():
            excluded = set(self.excluded.get(label, ()))
            kept = [k for k in range(alpha.shape[0]) if k not in excluded]
            out[label] = F.elu(alpha[kept] if excluded else alpha) + 1
        return out

    def sampled_weights(self, purpose: str) -> dict[str, torch.Tensor]:
        """One pathwise Dirichlet sample per label, identical on every rank; excluded candidates
        get weight 0 (the sample is drawn over the others, as the code's pruned mask)."""
        seed = rank_shared_seed("drnas", self.global_step, purpose)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            samples = {label: Dirichlet(beta).rsample() for label, beta in self.concentrations().items()}
        for label, excluded in self.excluded.items():
            full = samples[label].new_zeros(self.alphas[label].shape[0])
            kept = [k for k in range(full.shape[0]) if k not in set(excluded)]
            samples[label] = full.index_put((torch.tensor(kept),), samples[label])
        return samples

    def kl_regulariser(self) -> torch.Tensor:
        """reg_scale * sum over edges of KL(Dirichlet(elu(alpha) + 1) || Dirichlet(1))."""
        total = sum(kl_divergence(Dirichlet(beta), Dirichlet(torch.ones_like(beta))).sum()
                    for beta in self.concentrations().values())
        return self.hparams.reg_scale * total

    def decisions_for_weight_step(self) -> Mapping[str, Any]:
        return {k: w.detach() for k, w in self.sampled_weights("weights").items()}

    def decisions_for_validation(self, batch_idx: int) -> Mapping[str, Any]:
        return self.sampled_weights(f"validation/{self.current_epoch}/{batch_idx}")

    def architecture_step(self, train_batch: Any, val_batch: Any) -> torch.Tensor | None:
        if self.current_epoch < self.hparams.arch_warmup_epochs:
            return None
        arch_optimizer = self.arch_optimizer()
        arch_optimizer.zero_grad()
        loss = self.loss_and_accuracy(val_batch, self.sampled_weights("architecture"))[0]
        regularised = loss + self.kl_regulariser() if self.hparams.reg_type == "kl" else loss
        self.manual_backward(regularised)
        all_reduce_mean([a.grad for a in self.architecture_parameters() if a.grad is not None])
        arch_optimizer.step()
        return loss.detach()

    # --- the progressive schedule ------------------------------------------------------------
    def on_fit_start(self) -> None:
        h = self.hparams
        if h.stage == 1 and h.widen_from and self.trainer.ckpt_path is None:
            self.widen_from_checkpoint(h.widen_from)
        super().on_fit_start()

    def epochs_before(self) -> int:
        """Stage 1 continues stage 0's cosine (train_search.py ``configure_scheduler``)."""
        return int(self.hparams.get("stage_zero_epochs") or 0)

    @torch.no_grad()
    def widen_from_checkpoint(self, path: str) -> None:
        """Start stage 1 where stage 0 ended: its weights widened by Net2Wider, SGD momentum with
        them, alpha and the Adam state of the kept candidates (the cosine continues through
        :meth:`epochs_before`)."""
        checkpoint = _stage_zero(path)
        saved, schedule = checkpoint["lr_schedulers"][0], self.lr_schedulers()
        if saved.get("T_max") != getattr(schedule, "T_max", None):
            raise ValueError(f"widen_from {path}: stage 0's cosine spans {saved.get('T_max')} epochs and this "
                             f"stage's {getattr(schedule, 'T_max', None)}; stage 1 continues stage 0's cosine: "
                             "set cosine_t_max to the total of both stages (50) in both")
        old_options = checkpoint["hyper_parameters"]["space_options"]
        old = self.space.build_supernet(num_classes=self.hparams.num_classes, in_channels=self.hparams.in_channels,
                                        **old_options)
        generator = torch.Generator().manual_seed(rank_shared_seed("drnas/net2wider"))
        mapping = supernet_plan(old, self.supernet, generator)
        old_state = {k[len("supernet."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("supernet.")}
        own = self.supernet.state_dict()
        for name, tensor in widen_state(old_state, own, mapping).items():
            own[name].copy_(tensor)
        kept = {label: [old.choices[label].index(op) for op in self.supernet.choices[label]] for label in EDGE_LABELS}
        for label, alpha in self.alphas.items():
            alpha.copy_(checkpoint["state_dict"][f"alphas.{label}"][kept[label]])
        weights, arch = (o.optimizer for o in self.optimizers())
        sgd, adam = checkpoint["optimizer_states"][:2]
        old_params = [name for name, _ in old.named_parameters()]
        for name, parameter in self.supernet.named_parameters():
            source, widening = mapping[name]
            buffer = sgd["state"].get(old_params.index(source), {}).get("momentum_buffer")
            if buffer is not None:  # configure_optimizer: the buffer widened as its weight
                weights.state[parameter]["momentum_buffer"] = widen(buffer, widening).to(parameter)
        for index, (label, alpha) in enumerate(self.alphas.items()):  # the Adam's parameter order
            state = adam["state"].get(index)
            if state:
                arch.state[alpha] = {k: (v[kept[label]].clone() if v.dim() else v.clone()) for k, v in state.items()}


def _stage_options(args: tuple[Any, ...], kwargs: dict[str, Any], stage: int, widen_from: str | None,
                   partial_channels: int, stage_partial_channels: tuple[int, ...],
                   keep_candidates: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The space options of a stage: its partial channels and candidates per edge."""
    if stage not in (0, 1):
        raise ValueError(f"stage={stage}; DrNAS's progressive search has the stages 0, 1 (None: one run)")
    if len(stage_partial_channels) != 2:
        raise ValueError("stage_partial_channels takes one value per stage (2)")
    if not 1 <= keep_candidates <= len(SEARCHED):
        raise ValueError(f"keep_candidates={keep_candidates}: keep 1 to {len(SEARCHED)} of the searched ops")
    if partial_channels != 1:
        raise ValueError("with stage set, partial_channels comes from stage_partial_channels; leave it out")
    space = args[0] if args else kwargs.get("space", "nb201")
    if space != "darts":
        raise ValueError(f"DrNAS's progressive search (stage) is on the darts space, not {space!r}")
    options = dict((args[1] if len(args) >= 2 else kwargs.get("space_options")) or {})
    if "edge_candidates" not in options:
        if stage == 0:
            per_label = {label: list(SEARCHED) for label in EDGE_LABELS}
        else:
            if not widen_from:
                raise ValueError("stage 1 starts from stage 0: set widen_from to its checkpoint "
                                 "(runs/.../checkpoints/last.ckpt)")
            per_label = _pruned(widen_from, keep_candidates)
        args, kwargs = with_space_option(args, kwargs, "edge_candidates", candidates_per_cell(per_label))
    return with_space_option(args, kwargs, "partial_channels", int(stage_partial_channels[stage]))


def _stage_zero(path: str) -> dict[str, Any]:
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if checkpoint["oneshot"]["algorithm"] != "DrnasSearch" or hparams.get("stage") != 0:
        raise ValueError(f"widen_from {path}: a DrnasSearch checkpoint of stage 0 is needed, got "
                         f"{checkpoint['oneshot']['algorithm']} stage {hparams.get('stage')}")
    return checkpoint


def _pruned(path: str, keep: int) -> dict[str, list[str]]:
    """Stage 1's candidates: per edge the ``keep`` of stage 0's with the largest alpha."""
    checkpoint = _stage_zero(path)
    candidates = candidates_per_label(checkpoint["hyper_parameters"]["space_options"].get("edge_candidates"))
    state = checkpoint["state_dict"]
    return {label: top_candidates(candidates[label], state[f"alphas.{label}"].tolist(), keep) for label in EDGE_LABELS}
