"""The `tl-tensorsim` console script (also `python -m tl_tensorsim`).

tl-tensorsim demo                      # every default demo into ./tl_tensorsim_report/report.md
tl-tensorsim demo induction --full     # one demo, slow version (retrains its model)
tl-tensorsim demo --list               # the demos there are
tl-tensorsim train-induction           # retrain the embedded induction model, rewrite its shipped weights
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from tl_tensorsim.demos import DEFAULT_OUT

    parser = argparse.ArgumentParser(prog="tl-tensorsim", description="tl_tensorsim: TransformerLens plugin tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run demos and write a report (markdown + PNG figures)")
    demo.add_argument("names", nargs="*", metavar="NAME", help="demos to run (default: every default demo)")
    demo.add_argument("--full", action="store_true", help="slow version: retrain models, bigger sweeps")
    demo.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"report folder (default: {DEFAULT_OUT}/)")
    demo.add_argument("--list", action="store_true", help="list the demos and exit")
    retrain = sub.add_parser("train-induction", help="retrain the embedded induction model and rewrite its weights")
    retrain.add_argument("--out", default=None, metavar="DIR", help="folder for induction_2l.{safetensors,json}")
    retrain.add_argument("--steps", type=int, default=None, help="training steps (default: InductionConfig.steps)")
    retrain.add_argument("--seed", type=int, default=None)
    return parser


def _list_demos() -> None:
    from tl_tensorsim.demos import available

    for module in available():
        name = module.__name__.rsplit(".", 1)[-1]
        print(f"{name:<24} {'default' if module.DEFAULT else '       '}  {module.TITLE}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train-induction":
        from tl_tensorsim.models.induction import WEIGHTS_DIR, retrain

        retrain(args.out or WEIGHTS_DIR, steps=args.steps, seed=args.seed)
        return 0
    if args.command != "demo":
        parser.print_help()
        return 2
    from tl_tensorsim.demos import DemoFailed, run_demos

    if args.list:
        _list_demos()
        return 0
    try:
        path = run_demos(args.names or None, args.out, full=args.full)
    except DemoFailed as exc:
        print(f"tl-tensorsim: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        parser.exit(2, f"tl-tensorsim: {exc}\n")
    print(f"Report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
