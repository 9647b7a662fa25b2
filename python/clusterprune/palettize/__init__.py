"""Palettization (channel-wise k-means parameter quantization): config, targets and their
data-free column weights, bit allocation, and the pipeline that writes the palettized model."""
