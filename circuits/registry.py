"""Known circuits (ground truth), stored as JSON in `circuits/data/`: GPT-2 small's IOI, greater-than and induction
circuits, this project's embedded induction model (`induction_2l`) and its IOI model (`ioi_3l`, found by path
patching).

Each circuit is a set of attention heads `(layer, head)` grouped into classes, plus MLP layers, with the paper and
source it was taken from and the metric it is evaluated with. `known(model_name, task)` finds one by model and task;
`Circuit.hook_points(cls)` gives the `(hook name, head)` pairs ready for `run_with_hooks` (with `hooks.*(head=...)`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    task: str = ""
    paper: str = ""
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

    def _class_names(self, classes: str | Sequence[str] | None) -> list[str]:
        if classes is None:
            return list(self.classes)
        wanted = [classes] if isinstance(classes, str) else list(classes)
        unknown = [c for c in wanted if c not in self.classes]
        if unknown:
            raise ValueError(
                f"classes: unknown head class {unknown[0]!r} of {self.name!r}; expected one of {list(self.classes)}"
            )
        return wanted

    def hook_points(
        self, classes: str | Sequence[str] | None = None, hook: str = "attn.hook_z"
    ) -> list[tuple[str, int]]:
        """`(hook name, head)` for every head of `classes` (default: all), e.g. `("blocks.9.attn.hook_z", 9)`, in
        class order; use as `fwd_hooks=[(name, hooks.ablate(B, head=h)) for name, h in circuit.hook_points(...)]`.
        `hook` is the per-head hook point inside the block (`attn.hook_z`, `attn.hook_result`, `attn.hook_q`, ...)."""
        if not isinstance(hook, str) or not hook.startswith("attn.hook_"):
            raise ValueError(f"hook: expected a per-head hook point such as 'attn.hook_z'; got {hook!r}")
        return [(f"blocks.{layer}.{hook}", head) for c in self._class_names(classes) for layer, head in self.classes[c]]

    def hook_names(self, hook: str = "attn.hook_z") -> dict[str, list[tuple[str, int]]]:
        """`{class: [(hook name, head), ...]}` for every class, and `"mlp"` -> `[("blocks.L.hook_mlp_out", -1)]`
        when the circuit has MLPs (head -1: the whole hook point)."""
        out = {c: self.hook_points(c, hook) for c in self.classes}
        if self.mlps:
            out["mlp"] = [(f"blocks.{m}.hook_mlp_out", -1) for m in self.mlps]
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "task": self.task,
            "paper": self.paper,
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
            task=d.get("task", d["name"]),
            paper=d.get("paper", ""),
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


# model-name spellings -> the registry's model key
MODEL_ALIASES = {
    "gpt2": "gpt2",
    "gpt2-small": "gpt2",
    "gpt-2": "gpt2",
    "gpt-2 small": "gpt2",
    "induction_2l": "induction_2l",
    "induction": "induction_2l",
    "tl_tensorsim-induction-2l": "induction_2l",
    "ioi_3l": "ioi_3l",
    "ioi": "ioi_3l",
    "tl_tensorsim-ioi-3l": "ioi_3l",
}


def known(model_name: str, task: str) -> Circuit:
    """The known circuit of `task` (`"ioi"`, `"greater_than"`, `"induction"`) in model `model_name` (`"gpt2"` /
    `"gpt2-small"`; `"induction_2l"`, the project's embedded induction model, also by its TransformerLens model name
    `"tl_tensorsim-induction-2l"`; `"ioi_3l"`, the project's IOI model, also `"tl_tensorsim-ioi-3l"`); a `ValueError` lists the (model, task) pairs there are."""
    if not isinstance(model_name, str) or not isinstance(task, str):
        raise TypeError(f"model_name, task: expected strings; got {type(model_name).__name__}, {type(task).__name__}")
    circuits = [get_circuit(n) for n in available_circuits()]
    pairs = sorted((c.model, c.task) for c in circuits)
    model = MODEL_ALIASES.get(model_name.lower(), model_name)
    for c in circuits:
        if c.model == model and c.task == task:
            return c
    raise ValueError(f"model_name, task: no known circuit for ({model_name!r}, {task!r}); known (model, task): {pairs}")
