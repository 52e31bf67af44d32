"""``oneshot latency``: measure a latency lookup table of the ofa-mbv3 space on this machine.

The predictor selection searches under ``latency<=MS`` with such a table (``latency_table``);
measure it on the device the subnet will run on, for the supernet's space options, classes and
input channels.
"""
from __future__ import annotations

import json
import time

from oneshot.commands.common import UserError
from oneshot.commands.parsing import OneLineArgumentParser

HELP = "measure a latency lookup table of the ofa-mbv3 space on this machine (for latency<=MS budgets)"


def int_list(option: str, text: str | None) -> list[int] | None:
    """``"128,160"`` -> [128, 160]; None stays None."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{option} {text!r}: a comma-separated list of positive integers, e.g. 128,160,192,224")
    return values


def main(argv: list[str]) -> None:
    parser = OneLineArgumentParser(prog="oneshot latency", description=HELP)
    parser.add_argument("--space", default="ofa-mbv3", help="the space (ofa-mbv3, the only one with a table)")
    parser.add_argument("--space-options", default="{}", metavar="JSON",
                        help="the supernet's space options, e.g. '{\"width_mult\": 1.2}' (widths; resolutions, "
                             "kernel_sizes, expand_ratios and depths give the defaults below)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (1000)")
    parser.add_argument("--in-channels", type=int, default=3, help="input channels (3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads torch may use (default: torch's)")
    parser.add_argument("--resolutions", default=None,
                        help="comma-separated sizes (default: the space options' resolutions, else OFA's 128..224 "
                             "in steps of 4)")
    parser.add_argument("--kernel-sizes", default=None, help="comma-separated (default 3,5,7)")
    parser.add_argument("--expand-ratios", default=None, help="comma-separated (default 3,4,6)")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per entry, the median kept (20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed forwards before them (5)")
    parser.add_argument("--out", required=True, help="the table's JSON file")
    args = parser.parse_args(argv)

    if args.space != "ofa-mbv3":
        raise UserError(f"--space {args.space}: latency tables exist for ofa-mbv3 only")
    try:
        space_options = json.loads(args.space_options)
    except json.JSONDecodeError as error:
        raise UserError(f"--space-options is not JSON ({error.msg} at character {error.pos}): "
                        "e.g. '{\"width_mult\": 1.2}'") from None
    if not isinstance(space_options, dict):
        raise UserError("--space-options is a JSON object, e.g. '{\"width_mult\": 1.2}'")
    if args.repeats < 1 or args.warmup < 0 or min(args.num_classes, args.in_channels) < 1:
        raise UserError(f"--repeats {args.repeats} --warmup {args.warmup} --num-classes {args.num_classes} "
                        f"--in-channels {args.in_channels}: repeats, classes and channels at least 1, "
                        "warmup at least 0")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: at least 1")
    given = {name: int_list(f"--{name.replace('_', '-')}", getattr(args, name))
             for name in ("resolutions", "kernel_sizes", "expand_ratios")}

    import torch

    from oneshot.latency import measure_latency_table, measure_network_latency
    from supernets.ofa_mbv3 import (DEPTHS, EXPAND_RATIOS, KERNEL_SIZES, RESOLUTION, RESOLUTIONS, OfaMbv3Space,
                                    resolution_list, space_choices)

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device}: not a torch device; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is visible here; measure on cpu, "
                        "or on the GPU machine")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    resolutions = given["resolutions"] or list(resolution_list(space_options.get("resolutions", RESOLUTIONS)))
    kernels = given["kernel_sizes"] or list(space_options.get("kernel_sizes", KERNEL_SIZES))
    expands = given["expand_ratios"] or list(space_options.get("expand_ratios", EXPAND_RATIOS))
    start = time.perf_counter()
    print(f"measuring {len(resolutions)} resolutions x ({5 * 2 * len(kernels) * len(expands)} blocks + 2 fixed parts) "
          f"on {args.device}, median of {args.repeats}", flush=True)
    table = measure_latency_table(space_options, args.num_classes, args.in_channels, resolutions, kernels, expands,
                                  device, args.repeats, args.warmup, progress=lambda line: print(line, flush=True))
    elapsed = time.perf_counter() - start
    table.save(args.out)
    choices = {**space_choices(kernels, expands, space_options.get("depths", DEPTHS)),
               RESOLUTION: tuple(sorted(resolutions))}
    space = OfaMbv3Space()
    print(f"wrote {args.out}: {len(table)} entries in {elapsed:.1f} s on {table.device['description']} "
          f"(threads: {table.device['threads']}, torch {table.device['torch']})")
    for name, arch in (("largest", space.largest(choices)), ("smallest", space.smallest(choices))):
        measured = measure_network_latency(arch, table, device, args.repeats, args.warmup)
        predicted = table.predict(arch)
        print(f"{name} subnet at {arch[RESOLUTION]}: predicted {predicted:.3f} ms (sum of parts), measured "
              f"{measured:.3f} ms whole ({100 * (predicted - measured) / measured:+.1f}%)")
