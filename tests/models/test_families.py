"""The family registry: each family says its unit map, required tensors and attention context in
one place, and evaluate / finetune ask it."""

from __future__ import annotations

import pytest

from clusterprune.errors import UnsupportedModelError
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.models.ctc import CTC
from clusterprune.models.registry import FAMILIES, family_of
from clusterprune.models.whisper import WHISPER


def test_family_registry():
    assert {t for t in FAMILIES} == {"whisper", "hubert", "wav2vec2"}
    with pytest.raises(UnsupportedModelError, match="unsupported model_type 'bert'"):
        family_of({"model_type": "bert"})
    with pytest.raises(UnsupportedModelError):
        family_of({"model_type": ["whisper"]})


@pytest.mark.parametrize("name", ["whisper", "hubert", "hubert_stable", "wav2vec2", "whisper_sharded"])
def test_required_tensors_are_the_checkpoints_own(checkpoints, name):
    with Checkpoint(checkpoints[name]) as c:
        family = family_of(c.config)
        need = family.required_tensors(c.config, set(c.where))
        parts = {p.tensor for s in family.unit_map(c.config, set(c.where)).modules for p in s.parts}
        assert need and all(c.info(n).shape == shape for n, shape in need.items())
        assert set(need) | parts <= set(c.names())
        # every LayerNorm a Gaussian score reads is required (so a wrong shape is refused up front)
        norms = {f"{s.input_norm}.weight" for s in family.unit_map(c.config, set(c.where)).modules if s.input_norm}
        assert norms <= set(need)


def test_attended_tokens_follow_the_model():
    from clusterprune.models.units import ModuleSpec

    spec = ModuleSpec("m", "attention", "encoder.self_attn", 0, 4, 8, 32, ())
    assert WHISPER.attended_tokens({"max_source_positions": 1500}, spec) == 1500
    assert WHISPER.attended_tokens({}, ModuleSpec("m", "attention", "decoder.self_attn", 0, 4, 8, 32, ())) == 32
    assert CTC.attended_tokens({}, spec) == 500
