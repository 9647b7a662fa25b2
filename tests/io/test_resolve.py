"""A model named by a Hugging Face hub id resolves through huggingface_hub's cache (offline here:
the test fills the cache itself; no test touches the network)."""

from __future__ import annotations

import shutil

import pytest

from clusterprune import cli
from clusterprune.errors import CheckpointNotFoundError
from clusterprune.io.resolve import resolve_model

pytest.importorskip("huggingface_hub")


def test_hub_ids_resolve_from_the_local_cache_offline(checkpoints, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "hub"
    commit = "0" * 40
    snap = cache / "models--acme--tiny-whisper" / "snapshots" / commit
    shutil.copytree(checkpoints["whisper"], snap)
    (cache / "models--acme--tiny-whisper" / "refs").mkdir()
    (cache / "models--acme--tiny-whisper" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve_model("acme/tiny-whisper").resolve() == snap.resolve()
    assert cli.main(["compress", "acme/tiny-whisper", str(tmp_path / "out"), "--quiet"]) == 0
    assert cli.main(["inspect", "acme/tiny-whisper"]) == 0 and "whisper" in capsys.readouterr().out
    assert resolve_model(tmp_path / "out") == tmp_path / "out"  # a path that exists is taken as it is
    with pytest.raises(CheckpointNotFoundError, match="acme/missing: no such directory, and not available"):
        resolve_model("acme/missing")
