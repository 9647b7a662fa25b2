"""`selfgen --sensitivity`: the output Fisher's diagonal per output channel, against a direct
autograd computation on the same self-generated clips and transcripts; the statistics it sits
beside unchanged; a CTC model's; the file's checks."""

from __future__ import annotations

import numpy as np
import pytest

from clusterprune.errors import CorruptCheckpointError
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.stats import ActivationStats, load_stats
from conftest import needs_package, small_selfgen

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def fisher_stats(trainable, tmp_path_factory):
    return small_selfgen(trainable["whisper"], tmp_path_factory.mktemp("fisher"), "--sensitivity")


def _layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))}


def reference_fisher(model_dir, clips: int, samples: int) -> tuple[dict[str, np.ndarray], int]:
    """sum over sequences and positions of (d log p(sampled tokens) / d output)^2, per output
    channel, by torch.autograd.grad with respect to every layer's output (each encoder output
    once per clip: the clip's transcripts' summed log-likelihood), over the sequences."""
    from clusterprune.activations.collect import SelfGenConfig, _clip_transcripts, clip_inputs, decoder_prompt
    from clusterprune.activations.synth import clip_lengths
    from clusterprune.models.hf import load_model

    model, processor, _ = load_model(model_dir)
    gen = model.generation_config
    eot = int(gen.eos_token_id)
    never = set(range(eot + 1, model.config.vocab_size)) | set(gen.suppress_tokens or [])
    first_never = never | set(gen.begin_suppress_tokens or [])
    prompt = len(decoder_prompt(model))
    config = SelfGenConfig(clips=clips, decoder_samples=samples)
    layers = _layers(model)
    sums = {n: np.zeros(m.weight.shape[0]) for n, m in layers.items()}
    sequences = 0
    for index, seconds in enumerate(clip_lengths(clips, 0)):
        with torch.no_grad():
            inputs, seconds = clip_inputs(torch, model, processor, config, index, seconds)
            rows = _clip_transcripts(torch, model, model.get_encoder()(inputs.input_features), seconds, config, index)
        outputs: list[tuple[str, object]] = []
        hooks = [
            m.register_forward_hook(lambda _m, _i, o, n=n, seen=outputs: seen.append((n, o))) for n, m in layers.items()
        ]
        hidden = model.get_encoder()(inputs.input_features).last_hidden_state
        total = 0.0
        for row in rows:
            logits = model(encoder_outputs=(hidden,), decoder_input_ids=torch.tensor([row[:-1]])).logits[0].double()
            for position in range(prompt, len(row)):
                masked = first_never if position == prompt else never
                allowed = torch.tensor([t for t in range(model.config.vocab_size) if t not in masked])
                scores = logits[position - 1]
                total = total + scores[row[position]] - torch.logsumexp(scores[allowed], dim=0)
            sequences += 1
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(total, [o for _, o in outputs], allow_unused=True)
        for (name, _), grad in zip(outputs, grads, strict=True):
            if grad is None:
                continue
            axis = 1 if isinstance(layers[name], torch.nn.Conv1d) else -1
            g = grad.double().movedim(axis, -1).reshape(-1, grad.shape[axis]).numpy()
            sums[name] += (g * g).sum(axis=0)
    return {f"{n}.weight": v / sequences for n, v in sums.items()}, sequences


@needs_package
def test_the_sensitivity_is_the_output_fisher_of_the_models_own_transcripts(trainable, fisher_stats, selfgen_stats):
    stats = load_stats(fisher_stats)
    expected, sequences = reference_fisher(trainable["whisper"], clips=2, samples=2)
    with Checkpoint(trainable["whisper"]) as ckpt:
        stored = set(ckpt.where)
    assert set(stats.sensitivity) == set(expected) & stored  # the tied output projection is the embedding
    assert "model.encoder.conv1.weight" in stats.sensitivity
    assert stats.sensitivity_count == sequences == 2 * 2
    for name, values in stats.sensitivity.items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-6, atol=1e-12 * expected[name].max(), err_msg=name)
        assert values.max() > 0, name
    assert stats.settings["sensitivity"] is True
    # the statistics beside it are those of a run without it, byte for byte
    plain = load_stats(selfgen_stats)
    for name in plain.modules:
        a, b = stats.modules[name], plain.modules[name]
        assert a.mean.tobytes() == b.mean.tobytes() and a.cov.tobytes() == b.cov.tobytes()


@needs_package
def test_a_ctc_model_gets_the_sensitivity_of_its_convolutions_and_layers(trainable, tmp_path):
    import clusterprune

    out = tmp_path / "h.stats.safetensors"
    clusterprune.selfgen(trainable["hubert"], out, clips=1, sensitivity=True, progress=False)
    stats = load_stats(out)
    with Checkpoint(trainable["hubert"]) as ckpt:
        for name, values in stats.sensitivity.items():
            assert values.shape == (ckpt.info(name).shape[0],) and values.max() > 0, name
    names = set(stats.sensitivity)
    assert any(".conv_layers." in n for n in names) and any("encoder.layers.0.feed_forward" in n for n in names)
    assert stats.sensitivity_count == 1


@pytest.mark.parametrize(
    ("values", "count", "message"),
    [
        (np.array([1.0, -0.5]), 3, "holds a negative, NaN or infinite value"),
        (np.array([1.0, np.nan]), 3, "holds a negative, NaN or infinite value"),
        (np.array([1.0, 2.0]), 0, "count 0 is not a positive integer"),
    ],
)
def test_a_bad_sensitivity_is_refused_naming_the_tensor(tmp_path, values, count, message):
    path = tmp_path / "s.safetensors"
    ActivationStats({}, sensitivity={"layer.weight": values}, sensitivity_count=count).save(path)
    with pytest.raises(CorruptCheckpointError) as e:
        load_stats(path)
    assert str(path) in str(e.value) and message in str(e.value)
    if count:
        assert "layer.weight.sensitivity" in str(e.value)


def test_the_sensitivity_round_trips(tmp_path):
    path = tmp_path / "s.safetensors"
    values = {"b.weight": np.array([0.0, 3.5, 1e-300]), "a.weight": np.array([2.0])}
    ActivationStats({}, sensitivity=values, sensitivity_count=7).save(path)
    back = load_stats(path)
    assert back.sensitivity_count == 7 and set(back.sensitivity) == set(values)
    for name, v in values.items():
        assert back.sensitivity[name].tobytes() == v.tobytes()
