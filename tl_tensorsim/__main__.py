"""`python -m tl_tensorsim demo | train | fit-ndm ...`: the same as the `tl-tensorsim` console script (and the form
`torchrun --nproc-per-node N -m tl_tensorsim fit-ndm ...` launches on N processes)."""

from tl_tensorsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
