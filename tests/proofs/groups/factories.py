"""Test factories: the hand-built networks of `tl_tensorsim.proofs.groups.handbuilt`."""

from tl_tensorsim.proofs.groups.handbuilt import handbuilt, tetra_circuits

__all__ = ["handbuilt", "tetra_circuits"]
