"""Weight-based, symmetry-invariant similarity of attention heads (arXiv 2605.15183, applied to attention heads).

- re-exported from the core (`tl_tensorsim.factored`, `tl_tensorsim.linalg`): exact (metric) Frobenius inner
  products and cosines of factored matrices, `FactoredMatrix` inputs, batched all pairs, factored-vs-dense choice
  by cost; `gram` for embedding / unembedding metrics.
- `heads`: `head_similarity` (QK / OV circuits, residual or token level); `results`: its result `HeadSimilarity`.
- `checkpoints`: `checkpoint_similarity` across training checkpoints and its result `CheckpointSimilarity`.
- `baselines`: raw weight cosine and behavioural (head output) cosine, in the same result type.
"""

from tl_tensorsim.factored import factored_cosine, factored_inner, operation_counts, pairwise_kernel
from tl_tensorsim.linalg import cosine_from_parts, gram
from tl_tensorsim.similarity.baselines import behavioral_similarity, head_outputs, raw_weight_similarity
from tl_tensorsim.similarity.checkpoint_io import load_pretrained_checkpoint
from tl_tensorsim.similarity.checkpoints import CheckpointSimilarity, checkpoint_similarity
from tl_tensorsim.similarity.circuit_parts import circuit_factors
from tl_tensorsim.similarity.heads import head_similarity
from tl_tensorsim.similarity.results import HeadSimilarity

__all__ = [
    "CheckpointSimilarity",
    "HeadSimilarity",
    "behavioral_similarity",
    "checkpoint_similarity",
    "circuit_factors",
    "cosine_from_parts",
    "factored_cosine",
    "factored_inner",
    "gram",
    "head_outputs",
    "head_similarity",
    "load_pretrained_checkpoint",
    "operation_counts",
    "pairwise_kernel",
    "raw_weight_similarity",
]
