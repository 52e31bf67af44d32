"""Deploying a subnet of a trained OFA supernet (OFA ``get_active_subnet`` after
``set_running_statistics``): the static network with the supernet's weights and exact BN
statistics, for ``oneshot retrain --model.inherit_from`` and the OFA pipeline."""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch

from oneshot.algorithms import load_algorithm
from oneshot.algorithms.ofa import OfaSearch
from oneshot.batchnorm import preserved_batchnorm
from oneshot.checkpoints import resolve_checkpoint
from oneshot.rank.scoring import recalibrate_batchnorm
from supernets import Arch
from supernets.ofa_mbv3 import extract_network

def inherit_network(source: str, arch: Arch, batches: Sequence[Any],
                    network_options: Mapping[str, Any] | None = None) -> tuple[torch.nn.Module, str]:
    """OFA's deployment of a subnet: the static network of ``arch`` with the weights of the
    supernet in ``source`` (a run directory or checkpoint of OfaSearch), its BN statistics
    recalibrated to exact averages over ``batches``. Returns the network and the checkpoint path.

    Raises:
        ValueError: ``source`` is not an OFA run, ``arch`` lies outside what its phase trained, or
            ``network_options`` differ from the supernet's.
    """
    path = resolve_checkpoint(source)
    model = load_algorithm(path)
    if not isinstance(model, OfaSearch):
        raise ValueError(f"inherit_from {source}: a {type(model).__name__} run; weights are inherited from "
                         "an OfaSearch (oneshot shrink) run")
    given = dict(network_options or {})
    defaults = {k: p.default for k, p in inspect.signature(model.space.build_network).parameters.items()}

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, (list, tuple)) else value

    expected = model.space.network_options(model.space_options)
    different = {k: expected.get(k, defaults[k]) for k in {*expected, *given} - {"dropout"}
                 if plain(given.get(k, defaults[k])) != plain(expected.get(k, defaults[k]))}
    if different:
        raise ValueError(f"the network differs from the supernet of {source}: set model.network_options "
                         f"{different} (the supernet's) to inherit its weights")
    model.check_enabled(dict(arch))
    model.eval()
    with preserved_batchnorm(model.supernet):
        recalibrate_batchnorm(model, arch, batches)
        network = extract_network(model.supernet, arch)
    return network, str(path)
