"""`python -m tl_tensorsim demo ...`: the same as the `tl-tensorsim` console script."""

from tl_tensorsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
