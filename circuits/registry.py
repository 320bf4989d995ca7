"""Known GPT-2 small circuits (ground truth), stored as JSON in `circuits/data/`.

Each circuit is a set of attention heads `(layer, head)` grouped into classes, plus MLP layers,
with the source it was taken from and the metric it is evaluated with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

from tl_tensorsim.artifacts import Artifact, Provenance


@dataclass(frozen=True)
class Circuit(Artifact):
    """A published circuit: `classes` maps a head class to its `(layer, head)` pairs.

    `to_dict()` / `from_dict()` are the shipped JSON form (`circuits/data/*.json`, no provenance);
    `save(dir)` stores every field and `provenance` as JSON (no tensors), read back by `tl_tensorsim.load(dir)`.
    """

    name: str
    model: str
    source: str
    metric: str
    classes: dict[str, tuple[tuple[int, int], ...]]
    mlps: tuple[int, ...] = field(default=())
    provenance: Provenance = field(default_factory=Provenance, compare=False, repr=False)

    def _check(self) -> None:
        for cls, hs in self.classes.items():
            if not all(isinstance(h, tuple) and len(h) == 2 and all(isinstance(i, int) for i in h) for h in hs):
                raise ValueError(f"classes[{cls!r}]: expected (layer, head) pairs of ints; got {list(hs)[:4]}")
        if not all(isinstance(m, int) for m in self.mlps):
            raise ValueError(f"mlps: expected layer indices (ints); got {list(self.mlps)}")

    @property
    def heads(self) -> tuple[tuple[int, int], ...]:
        """Every head of the circuit, sorted, each once."""
        return tuple(sorted({h for hs in self.classes.values() for h in hs}))

    def head_class(self, layer: int, head: int) -> str | None:
        for cls, hs in self.classes.items():
            if (layer, head) in hs:
                return cls
        return None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "source": self.source,
            "metric": self.metric,
            "classes": {k: [list(h) for h in v] for k, v in self.classes.items()},
            "mlps": list(self.mlps),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Circuit:
        return cls(
            name=d["name"],
            model=d["model"],
            source=d["source"],
            metric=d["metric"],
            classes={k: tuple(tuple(h) for h in v) for k, v in d["classes"].items()},
            mlps=tuple(d.get("mlps", ())),
        )


def available_circuits() -> list[str]:
    """Names of the circuits shipped with the package."""
    files = resources.files("tl_tensorsim.circuits").joinpath("data").iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def get_circuit(name: str) -> Circuit:
    """The ground-truth circuit `name` (one of `available_circuits()`)."""
    names = available_circuits()
    if name not in names:
        raise ValueError(f"name: unknown circuit {name!r}; available: {names}")
    text = resources.files("tl_tensorsim.circuits").joinpath("data", f"{name}.json").read_text()
    return Circuit.from_dict(json.loads(text))
