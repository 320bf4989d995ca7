"""`tl_tensorsim.hooks`: subspace hooks for TransformerLens models.

Hook factories return callables with TransformerLens' hook signature `fn(activation, hook)`, usable in
`model.run_with_hooks(fwd_hooks=...)`, `with model.hooks(...)` and `model.add_hook(...)`, on a
`HookedTransformer` or a `TransformerBridge`:

    from tl_tensorsim import hooks

    fn = hooks.interchange(B, source=clean_cache["blocks.1.hook_resid_post"], positions=-1)
    logits = model.run_with_hooks(corrupt_tokens, fwd_hooks=[hooks.bind(model, "blocks.1.hook_resid_post", fn)])

- `project(B)`, `ablate(B, mode="zero"|"mean", mean=None)`, `interchange(B, source)`, `rotate(R)` / `unrotate(R)`;
- every factory takes `positions=` (None, int, `LongTensor[batch]`, bool mask `[batch, pos]`) and `head=` (per-head
  hook points such as `attn.hook_z`); everything not selected is returned bit-identical;
- `bind(model, name, fn)` / `validate(model, fwd_hooks)` / `run_with_hooks(model, tokens, fwd_hooks)` check hook
  names, feature sizes, heads and positions against the model before any forward pass.
"""

from tl_tensorsim.linalg import ORTHONORMAL_ATOL, default_atol
from tl_tensorsim.positions import Positions, check_positions, normalize_positions, positions_mask

from .base import SubspaceHook, check_basis
from .binding import bind, check_gate, gate_flag, run_with_hooks, validate
from .rotation import AffineProject, Rotate, rotate, unrotate
from .subspace import Ablate, Interchange, Project, ablate, interchange, project

__all__ = [
    "ORTHONORMAL_ATOL",
    "Ablate",
    "AffineProject",
    "Interchange",
    "Positions",
    "Project",
    "Rotate",
    "SubspaceHook",
    "ablate",
    "bind",
    "check_basis",
    "check_gate",
    "check_positions",
    "default_atol",
    "gate_flag",
    "interchange",
    "normalize_positions",
    "positions_mask",
    "project",
    "rotate",
    "run_with_hooks",
    "unrotate",
    "validate",
]
