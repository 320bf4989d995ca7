"""The `tl-tensorsim` console script (also `python -m tl_tensorsim`).

tl-tensorsim demo                      # every default demo into ./tl_tensorsim_report/report.md
tl-tensorsim demo induction --full     # one demo, slow version (retrains its model)
tl-tensorsim demo --list               # the demos there are
tl-tensorsim train --list              # the models there are
tl-tensorsim train induction --out DIR # retrain a model into DIR (default ~/.cache/tl_tensorsim/induction)
tl-tensorsim fit-ndm MODEL HOOK --data DATA --out DIR [--unit-size 32 ...]   # an NDM partition (see fit-ndm -h);
torchrun --nproc-per-node N -m tl_tensorsim fit-ndm ...                       # the same over N processes
"""

from __future__ import annotations

import argparse
import sys

from tl_tensorsim.fit_ndm_command import fit_ndm, fit_ndm_parser


def _parser() -> argparse.ArgumentParser:
    from tl_tensorsim.demos import DEFAULT_OUT

    parser = argparse.ArgumentParser(prog="tl-tensorsim", description="tl_tensorsim: TransformerLens plugin tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run demos and write a report (markdown + PNG figures)")
    demo.add_argument("names", nargs="*", metavar="NAME", help="demos to run (default: every default demo)")
    demo.add_argument("--full", action="store_true", help="slow version: retrain models, bigger sweeps")
    demo.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"report folder (default: {DEFAULT_OUT}/)")
    demo.add_argument("--list", action="store_true", help="list the demos and exit")
    _train_parser(sub)
    fit_ndm_parser(sub)
    return parser


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from tl_tensorsim.models.registry import CHECKPOINT_EVERY

    train = sub.add_parser("train", help="train a model of tl_tensorsim.models into a folder (never the package)")
    train.add_argument("name", nargs="?", metavar="NAME", help="the model (see --list)")
    train.add_argument("--list", action="store_true", help="list the models and exit")
    train.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder: DIR/model + DIR/checkpoints "
        "(default: ~/.cache/tl_tensorsim/NAME, honouring $XDG_CACHE_HOME)",
    )
    train.add_argument("--steps", type=int, default=None, help="shorthand for --set steps=N")
    train.add_argument("--seed", type=int, default=None, help="shorthand for --set seed=N")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=CHECKPOINT_EVERY,
        metavar="N",
        help=f"steps between resumable checkpoints (default {CHECKPOINT_EVERY})",
    )
    train.add_argument("--resume", action="store_true", help="continue the run in DIR/checkpoints")
    train.add_argument(
        "--write-shipped", action="store_true", help="developers: also overwrite the weights shipped inside the package"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tl_tensorsim.models import registry

    if args.list:
        for module in registry.available():
            shipped = "shipped" if module.SHIPPED is not None else "       "
            print(f"{module.__name__.rsplit('.', 1)[-1]:<16} {shipped}  {module.DESCRIPTION}")
        return 0
    if args.name is None:
        parser.exit(2, "tl-tensorsim: train: NAME: expected a model name; see `tl-tensorsim train --list`\n")
    overrides = dict(item.partition("=")[::2] for item in args.set)
    bad = [item for item in args.set if "=" not in item]
    overrides.update({k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None})
    try:
        if bad:
            raise ValueError(f"--set: expected KEY=VALUE; got {bad}")
        config = registry.make_config(args.name, overrides)
        registry.train_and_save(
            args.name,
            config,
            args.out,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=not args.quiet,
            write_shipped=args.write_shipped,
        )
    except (ValueError, TypeError) as exc:
        parser.exit(2, f"tl-tensorsim: train: {exc}\n")
    return 0


# ------------------------------------------------------------------------------------------------ fit-ndm
def _list_demos() -> None:
    from tl_tensorsim.demos import available

    for module in available():
        name = module.__name__.rsplit(".", 1)[-1]
        print(f"{name:<24} {'default' if module.DEFAULT else '       '}  {module.TITLE}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(args, parser)
    if args.command == "fit-ndm":
        return fit_ndm(args, parser)
    if args.command != "demo":
        parser.print_help()
        return 2
    from tl_tensorsim.demos import DemoFailed, MissingDependency, run_demos

    if args.list:
        _list_demos()
        return 0
    try:
        path = run_demos(args.names or None, args.out, full=args.full)
    except (DemoFailed, MissingDependency) as exc:
        print(f"tl-tensorsim: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        parser.exit(2, f"tl-tensorsim: {exc}\n")
    print(f"Report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
