"""Where a supernet step keeps its activations: saved-for-backward bytes per candidate op.

The first measurement of [5/8] (fused mixed-op kernels): what the autograd graph of one forward
holds until backward, attributed to the candidate op that saved it, to the mixing glue of the
mixed op around it (the weighted sum), or to the rest of the network. Saved tensors are seen
through ``torch.autograd.graph.saved_tensors_hooks``; each storage is counted once (the edge input
that several candidates save is charged to the first and listed as shared), parameters are not
counted (they live anyway). A candidate's label is its published name; a pool followed by the
DARTS search BN is split into the pool and ``+bn``.

Usage (repository root)::

    .venv/bin/python benchmarks/saved_activations.py                  # DARTS and NB201 supernets, batch 64, 32x32
    .venv/bin/python benchmarks/saved_activations.py --spaces nb201 --batch-size 16
    .venv/bin/python benchmarks/saved_activations.py --kernels unfused   # the candidate-by-candidate path only
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import supernets  # noqa: E402
from ops.kernels import status, use_fused  # noqa: E402
from ops.mixed import MixedOp  # noqa: E402

MiB = 2 ** 20
# What a mixed op saves outside its candidates: the weighted sum's copies of the candidate outputs
# (unfused), or the fused ops plus the one relu(x) the convolutions share (fused).
MIXING = "mixing (glue / fused ops)"


class SavedByLabel:
    """Saved-tensor hooks that charge each new storage to the innermost labelled module."""

    def __init__(self, model: nn.Module):
        self.stack: list[str] = ["network"]
        self.bytes: dict[str, int] = defaultdict(int)
        self.shared: dict[str, int] = defaultdict(int)
        self.owner: dict[int, str] = {}
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.handles = []
        for module in model.modules():
            if isinstance(module, MixedOp):
                self._label(module, MIXING)
                for name, op in zip(module.candidates, module.ops):
                    if "pool" in name and isinstance(op, nn.Sequential):  # DARTS search: pool, then BN
                        self._label(op[0], name)
                        self._label(op[-1], f"{name} +bn")
                        continue
                    # the fused path calls a candidate's layers, not the candidate: label both
                    for part in [op, *(m for m in op.modules() if not list(m.children()))]:
                        self._label(part, name)

    def _label(self, module: nn.Module, label: str) -> None:
        def enter(*_: object) -> None:
            self.stack.append(label)

        def leave(*_: object) -> None:  # a hook returning a value would replace the output
            self.stack.pop()

        self.handles.append(module.register_forward_pre_hook(enter))
        self.handles.append(module.register_forward_hook(leave))

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.parameters and storage.nbytes():
            label = self.stack[-1]
            if key not in self.owner:
                self.owner[key] = label
                self.bytes[label] += storage.nbytes()
            elif self.owner[key] != label:
                self.shared[label] += storage.nbytes()
        return tensor

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def build(space: str) -> tuple[nn.Module, dict]:
    """The supernet of the benchmarks (benchmarks/step.py): DARTS 8 cells C=16, NB201 C=16 N=5,
    and zero alphas (DARTS's first step) whose softmax is the dense decision."""
    search_space = supernets.get(space)
    options = {"C": 16, "layers": 8} if space == "darts" else {"C": 16, "N": 5}
    supernet = search_space.build_supernet(num_classes=10, **options)
    alphas = {label: torch.zeros(len(options_), requires_grad=True) for label, options_ in supernet.choices.items()}
    return supernet, alphas


def measure(space: str, batch_size: int, kernels: str) -> None:
    with use_fused(kernels == "fused"):
        _measure(space, batch_size, kernels)


def _measure(space: str, batch_size: int, kernels: str) -> None:
    torch.manual_seed(0)
    supernet, alphas = build(space)
    supernet.train()
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    supernet.to(memory_format=torch.channels_last)  # the searches' CPU layout (memory_format auto)
    recorder = SavedByLabel(supernet)
    with torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t):
        decisions = {label: torch.softmax(a, 0) for label, a in alphas.items()}  # alphas need their gradient
        out = supernet(x, decisions)
        logits = out[0] if isinstance(out, tuple) else out
        loss = nn.functional.cross_entropy(logits, torch.zeros(batch_size, dtype=torch.long))
    recorder.remove()
    total = sum(recorder.bytes.values())
    print(f"\n{space} ({kernels}): batch {batch_size}, 32x32 channels_last, softmax of zero alphas; "
          f"saved for backward {total / MiB:.1f} MiB")
    print(f"  {'saved by':<28} {'MiB':>9} {'share':>7} {'also saves (shared) MiB':>24}")
    for label, size in sorted(recorder.bytes.items(), key=lambda item: -item[1]):
        print(f"  {label:<28} {size / MiB:>9.1f} {size / total:>6.1%} {recorder.shared.get(label, 0) / MiB:>24.1f}")
    loss.backward()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=["darts", "nb201"], choices=["darts", "nb201"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--kernels", nargs="+", choices=["fused", "unfused"], default=["unfused", "fused"],
                        help="mixing path: candidate by candidate, or the fused kernels (ops.kernels)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; kernels: {status().reason}")
    for space in args.spaces:
        for kernels in args.kernels:
            measure(space, args.batch_size, kernels)


if __name__ == "__main__":
    main()
