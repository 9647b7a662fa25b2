"""Importers of other checkpoint formats (CTranslate2 Whisper)."""
