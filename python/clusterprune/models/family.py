"""What clusterprune knows of one model family, in one object: its unit map and LayerNorm rules,
the context a head sees, its Hugging Face classes, and how it transcribes and computes a loss.

Adding a family = one module with a :class:`Family` subclass, registered in :mod:`.registry`.
The Hugging Face methods import torch and transformers when called, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..speech import Utterance
from .units import ModuleSpec, UnitMap


class Family:
    """Base class of the model families (see the module docstring)."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    can_transcribe_translate: bool = False  # the --language / --task options apply

    # ---- weights only (numpy)
    def unit_map(self, config: dict[str, Any], names: set[str]) -> UnitMap:
        raise NotImplementedError

    def required_tensors(self, config: dict[str, Any], names: set[str]) -> dict[str, tuple[int, ...]]:
        """Every tensor (beyond the unit parts) the architecture needs, with the shape config.json
        implies: a checkpoint lacking one would load with that tensor random-initialised."""
        raise NotImplementedError

    def attended_tokens(self, config: dict[str, Any], spec: ModuleSpec) -> int:
        """Typical number of tokens a head of ``spec`` attends over (the Gaussian sharpness model)."""
        raise NotImplementedError

    # ---- Hugging Face (torch + transformers)
    def model_class(self) -> Any:
        raise NotImplementedError

    def load_processor(self, path: Path) -> Any:
        raise NotImplementedError

    def transcribe(
        self, model: Any, processor: Any, batch: list[Utterance], language: str | None, task: str
    ) -> tuple[list[str], list[bool]]:
        """Hypotheses of one batch, and whether each hit its length bound."""
        raise NotImplementedError

    def prepare_training(self, model: Any, freeze_feature_encoder: bool) -> None:
        """Freezes what the family does not train (nothing by default)."""

    def targets(self, processor: Any, utt: Utterance, max_tokens: int | None) -> list[int]:
        """The target token ids of one utterance."""
        raise NotImplementedError

    def count_targets(self, processor: Any, utts: list[Utterance], max_tokens: int | None) -> int:
        """Target tokens of a batch (the loss normaliser)."""
        raise NotImplementedError

    def loss_sum(
        self, model: Any, processor: Any, utts: list[Utterance], device: Any, autocast: Any, max_tokens: int | None
    ) -> Any:
        """Sum of the per-token losses of ``utts`` (a torch scalar)."""
        raise NotImplementedError
