"""``oneshot info``: index, parameters and FLOPs of an architecture, the table of a space, or
which path the mixed-op kernels take (``--kernels``)."""
from __future__ import annotations

from oneshot.commands.common import UserError
from oneshot.commands.parsing import OneLineArgumentParser

HELP = "index, parameters and FLOPs of an architecture, or the table of a whole space"


def main(argv: list[str]) -> None:
    import supernets
    from oneshot.info import describe, describe_kernels, write_space_table

    parser = OneLineArgumentParser(prog="oneshot info", description=HELP)
    parser.add_argument("--kernels", action="store_true",
                        help="say whether mixed ops run the fused C++/CUDA kernels or the PyTorch "
                             "reference path, and why (needs no --space)")
    parser.add_argument("--space", help=f"one of {', '.join(supernets.names())}")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--arch", help="canonical string, JSON, or an arch.json file")
    what.add_argument("--genotype", help="a published architecture of the space, e.g. DARTS_V2")
    what.add_argument("--index", type=int, help="NAS-Bench-201 benchmark index")
    what.add_argument("--all", action="store_true", help="every architecture (enumerable spaces only)")
    parser.add_argument("--out", help="CSV file for --all (default: stdout)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier outputs (default: the space's, 10 for nb201 and darts, "
                             "1000 for spos at 224x224)")
    parser.add_argument("--C", type=int, default=None, help="initial channels (DARTS evaluation: 36)")
    parser.add_argument("--layers", type=int, default=None, help="cells (DARTS evaluation: 20)")
    args = parser.parse_args(argv)
    if args.kernels:
        print(describe_kernels())
        return
    if args.space is None:
        parser.error("--space is required (or --kernels)")
    if args.arch is None and args.genotype is None and args.index is None and not args.all:
        parser.error("one of --arch, --genotype, --index or --all is required")
    try:
        space = supernets.get(args.space)
    except KeyError as error:
        raise UserError(error.args[0]) from None
    options = {k: v for k, v in (("C", args.C), ("layers", args.layers)) if v is not None}
    if args.all:
        write_space_table(space, args.out, num_classes=args.num_classes, **options)
        return
    print(describe(space, arch=args.arch, genotype=args.genotype, index=args.index,
                   num_classes=args.num_classes, **options))
