"""Command line interface: ``pinn-ng problems`` (and run / gather / figures, see the pipeline)."""

from __future__ import annotations

import argparse
import sys


def _cmd_problems(args) -> int:
    from . import problems

    for name in problems.names():
        p = problems.get(name)
        print(f"{name:12s} D={p.input_dim:<4d} P={p.n_params:<9,d} N_Ω={p.n_interior:<5d} "
              f"N_∂Ω={p.n_boundary:<5d} {p.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinn-ng", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("problems", help="list the PDE problems and their paper settings")
    sp.set_defaults(func=_cmd_problems)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
