"""Exporters to the runtimes users deploy with (CTranslate2 / faster-whisper)."""
