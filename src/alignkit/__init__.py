"""alignkit: align language models cheaply and see what alignment changes.

The public API is small and importing it does not import torch::

    from alignkit import load_model, GenerationConfig
    model = load_model("gemma-3-270m")
    print(model.generate(["The capital of France is"], GenerationConfig(max_new_tokens=8))[0].text)
"""

from __future__ import annotations

__version__ = "0.3.0"

from alignkit.errors import AlignkitError, CapabilityError, ModelLoadError, ModelSpecError
from alignkit.models.base import Capabilities, LanguageModel, require
from alignkit.models.registry import ModelOptions, load_model
from alignkit.types import Completion, GenerationConfig, Message, StreamEvent, TokenScores

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
    "StreamEvent",
    "TokenScores",
    "load_model",
    "require",
]
