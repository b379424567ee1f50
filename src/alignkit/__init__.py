"""alignkit: align language models cheaply and see what alignment changes.

The public API (importing it does not import torch)::

    import alignkit as ak

    model = ak.load("gemma-3-270m", method="urial", k=3)      # any method, any route tree, any spec
    print(ak.chat(model, "How do I boil an egg?", max_new_tokens=64))
    result = ak.shift("gemma-3-270m", model, prompts=["How do I boil an egg?"])
    result.positions()                                         # a pandas DataFrame, one row per answer position

See :mod:`alignkit.api` for every function and :mod:`alignkit.methods.tree` for route trees.
"""

from __future__ import annotations

from alignkit.api import (
    chat,
    data_answers,
    data_load,
    data_pairs,
    data_ranked_pairs,
    decoding_config,
    dera_sweep,
    evaluate,
    generate,
    load,
    node,
    open_scorer,
    resources,
    scorer,
    shift,
    weight_sweep,
)
from alignkit.errors import AlignkitError, CapabilityError, ModelLoadError, ModelSpecError
from alignkit.models.base import Capabilities, LanguageModel, require, walk
from alignkit.models.registry import ModelOptions, load_model
from alignkit.scoring import Score, Scorer
from alignkit.types import Completion, GenerationConfig, Message, StreamEvent, TokenScores
from alignkit.version import __version__

__all__ = [
    "__version__",
    "AlignkitError",
    "CapabilityError",
    "Capabilities",
    "Completion",
    "GenerationConfig",
    "LanguageModel",
    "Message",
    "ModelLoadError",
    "ModelOptions",
    "ModelSpecError",
    "Score",
    "Scorer",
    "StreamEvent",
    "TokenScores",
    "chat",
    "data_answers",
    "data_load",
    "data_pairs",
    "data_ranked_pairs",
    "decoding_config",
    "dera_sweep",
    "evaluate",
    "generate",
    "load",
    "load_model",
    "node",
    "open_scorer",
    "require",
    "resources",
    "scorer",
    "shift",
    "weight_sweep",
    "walk",
]
