"""Model families: unit maps (which tensors form which units), their rules, and Hugging Face loading."""
