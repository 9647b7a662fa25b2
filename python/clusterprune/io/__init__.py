"""Files: safetensors reading and writing, checkpoint directories, atomic outputs, metadata."""
