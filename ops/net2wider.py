"""Net2Wider as DrNAS widens its partial-channel edges between stages.

DrNAS's DARTS-space search (xiangning-chen/DrNAS@f2caa4d ``net2wider.py``, ``operations.py``
``wider`` methods, ``model_search.py`` ``MixedOp.wider``) trains its first stage with the
candidates seeing C/6 channels and its second with C/4. Between the stages each candidate is
widened in place: a widened tensor keeps its old channels and appends copies of randomly chosen
old ones (no rescaling, unlike Chen et al.'s function-preserving Net2Net), BatchNorm statistics
follow the same choice, and SGD momentum is widened with the same indices. This module states
that as data: a :data:`Widening` per tensor (the dimension and the old channels to copy), drawn
per candidate in the reference's order, and applied to weights and optimizer state alike.

Kept as the code does it (its ``wider`` methods), not as Net2Net would:
  * each depthwise conv draws a fresh output index; the pointwise conv after it reads that
    index on its input and draws a fresh one for its output, which its BatchNorm follows;
  * ``FactorizedReduce`` draws one index per half (each over the old half width) and its
    BatchNorm appends ``cat(index_1, index_2)``: the copied statistics of the second half come
    from the first half's channels, since the reference does not offset them;
  * a pooling candidate's BatchNorm draws its own index; identity and zero have nothing to widen.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from ops.candidates import DilConv, FactorizedReduce, ReLUConvBN, SepConv
from ops.mixed import MixedOp, PartialChannelMixedOp

Widening = dict[int, torch.Tensor]  # dimension -> the old channels appended, in order
Plan = dict[str, Widening]  # tensor name (in a module's state dict) -> its widening


def widen(tensor: torch.Tensor, widening: Widening) -> torch.Tensor:
    """``tensor`` with, per dimension, the indexed old slices appended (``InChannelWider``,
    ``OutChannelWider``, ``BNWider``, and ``configure_optimizer`` on momentum buffers)."""
    for dim, index in sorted(widening.items()):
        tensor = torch.cat([tensor, tensor.index_select(dim, index.to(tensor.device))], dim=dim)
    return tensor


def _draw(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """``torch.randint(0, old, (new - old,))``: the old channels the new ones copy."""
    if new < old:
        raise ValueError(f"Net2Wider widens: {old} -> {new} channels would narrow")
    return torch.randint(0, old, (new - old,), generator=generator)


def _batch_norm(prefix: str, bn: nn.BatchNorm2d, index: torch.Tensor) -> Plan:
    names = ["running_mean", "running_var"] if bn.track_running_stats else []
    names += ["weight", "bias"] if bn.affine else []
    return {f"{prefix}{name}": {0: index} for name in names}


def _depthwise_block(prefix: str, block: nn.Sequential, old: int, new: int, generator: torch.Generator) -> Plan:
    """ReLU -> depthwise -> pointwise -> BN (``DilConv.wider``; each half of ``SepConv.wider``)."""
    depthwise = _draw(old, new, generator)
    pointwise = _draw(old, new, generator)
    return {f"{prefix}1.weight": {0: depthwise}, f"{prefix}2.weight": {1: depthwise, 0: pointwise},
            **_batch_norm(f"{prefix}3.", block[3], pointwise)}


def candidate_plan(op: nn.Module, old: int, new: int, generator: torch.Generator) -> Plan:
    """How one candidate built with ``old`` channels becomes the same candidate with ``new``."""
    if isinstance(op, SepConv):
        return {**_depthwise_block("0.", op[0], old, new, generator),
                **_depthwise_block("1.", op[1], old, new, generator)}
    if isinstance(op, DilConv):
        return _depthwise_block("", op, old, new, generator)
    if isinstance(op, ReLUConvBN):
        into, out = _draw(old, new, generator), _draw(old, new, generator)
        plan = {"1.weight": {1: into, 0: out}, **_batch_norm("2.", op[2], out)}
        if op[1].bias is not None:  # NAS-Bench-201's bias = not affine; the reference has none to widen
            plan["1.bias"] = {0: out}
        return plan
    if isinstance(op, FactorizedReduce):
        first_in, first_out = _draw(old, new, generator), _draw(old // 2, new // 2, generator)
        second_in, second_out = _draw(old, new, generator), _draw(old // 2, new // 2, generator)
        return {"conv_1.weight": {1: first_in, 0: first_out}, "conv_2.weight": {1: second_in, 0: second_out},
                **_batch_norm("bn.", op.bn, torch.cat([first_out, second_out]))}
    if isinstance(op, nn.Sequential) and isinstance(op[-1], nn.BatchNorm2d) and len(op) == 2:
        return _batch_norm("1.", op[1], _draw(old, new, generator))  # a pool and its BN
    if not any(True for _ in op.parameters()) and not any(b.dim() for b in op.buffers()):
        return {}  # identity, zero, a bare pool
    raise ValueError(f"Net2Wider knows no widening of {type(op).__name__}; widened: SepConv, DilConv, "
                     "ReLUConvBN, FactorizedReduce, pool + BatchNorm, and ops without tensors")


def _edge_channels(edge: MixedOp) -> int:
    if isinstance(edge, PartialChannelMixedOp):
        return edge.channels // edge.partial_channels
    raise ValueError("Net2Wider widens partial-channel edges (PartialChannelMixedOp); this edge has all channels")


def supernet_plan(old: nn.Module, new: nn.Module, generator: torch.Generator) -> dict[str, tuple[str, Widening]]:
    """Every tensor of ``new``'s state dict -> (its source in ``old``'s, the widening to apply).

    The two supernets have the same layout except that the candidates of each edge see more
    channels in ``new`` and an edge may keep fewer candidates (matched by name). Tensors outside
    the edges map to themselves, unwidened.
    """
    mapping: dict[str, tuple[str, Widening]] = {}
    old_edges = dict(old.named_modules())
    for edge_name, edge in new.named_modules():
        if not isinstance(edge, MixedOp):
            continue
        source = old_edges.get(edge_name)
        if not isinstance(source, MixedOp):
            raise ValueError(f"Net2Wider: {edge_name} is an edge in the new supernet but not in the old one")
        old_width, new_width = _edge_channels(source), _edge_channels(edge)
        for k, candidate in enumerate(edge.candidates):
            if candidate not in source.candidates:
                raise ValueError(f"Net2Wider: {edge_name} keeps {candidate!r}, which the old edge lacks "
                                 f"(it has {', '.join(source.candidates)})")
            j = source.candidates.index(candidate)
            plan = candidate_plan(edge.ops[k], old_width, new_width, generator)
            for tensor_name in edge.ops[k].state_dict():
                mapping[f"{edge_name}.ops.{k}.{tensor_name}"] = (f"{edge_name}.ops.{j}.{tensor_name}",
                                                                 plan.get(tensor_name, {}))
    for name in new.state_dict():
        mapping.setdefault(name, (name, {}))
    return mapping


def widen_state(old_state: Mapping[str, torch.Tensor], new_state: Mapping[str, torch.Tensor],
                mapping: Mapping[str, tuple[str, Widening]], names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``new_state`` (or those of ``names``) computed from ``old_state`` by
    ``mapping``; a shape that does not come out as ``new_state``'s is an error naming it."""
    out = {}
    for name in (names if names is not None else new_state):
        source, widening = mapping[name]
        if source not in old_state:
            raise ValueError(f"Net2Wider: {source} (for {name}) is missing from the old state")
        tensor = widen(old_state[source], widening)
        if tensor.shape != new_state[name].shape:
            raise ValueError(f"Net2Wider: {source} {tuple(old_state[source].shape)} widens to "
                             f"{tuple(tensor.shape)}, but {name} is {tuple(new_state[name].shape)}")
        out[name] = tensor
    return out
