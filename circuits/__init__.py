"""`tl_tensorsim.circuits`: known GPT-2 circuits (IOI, greater-than, induction) as ground truth."""

from tl_tensorsim.circuits.registry import Circuit, available_circuits, get_circuit

__all__ = ["Circuit", "available_circuits", "get_circuit"]
