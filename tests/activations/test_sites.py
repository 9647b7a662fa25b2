"""The layer-input sites of `selfgen --layer-inputs`: a convolution's recorded rows are exactly what
its weight multiplies (so that its output error is (W - Q) x row by row, as a linear layer's)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the layer-input sites hook torch modules (the test extra installs torch)")

from clusterprune.activations.sites import conv_patches, input_sites  # noqa: E402


@pytest.mark.parametrize(
    ("channels", "out", "kernel", "stride", "padding", "length"),
    [(80, 7, 3, 1, 1, 20), (5, 4, 3, 2, 1, 17), (1, 3, 10, 5, 0, 64), (6, 2, 2, 2, 0, 9), (3, 5, 1, 1, 0, 4)],
)
def test_a_convolution_is_its_weight_times_the_recorded_windows(channels, out, kernel, stride, padding, length):
    g = torch.Generator().manual_seed(channels * 100 + kernel)
    conv = torch.nn.Conv1d(channels, out, kernel, stride=stride, padding=padding).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2, channels, length, generator=g, dtype=torch.float64)
    rows = conv_patches(torch, conv)(x)  # (batch x positions, channels x kernel)
    expected = conv(x).permute(0, 2, 1).reshape(-1, out)  # (batch x positions, out)
    product = rows @ conv.weight.reshape(out, -1).T + conv.bias
    assert rows.shape == (expected.shape[0], channels * kernel)
    np.testing.assert_allclose(product.detach().numpy(), expected.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_the_sites_take_plain_convolutions_and_leave_grouped_ones():
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv1d(4, 6, 3, padding=1)
            self.grouped = torch.nn.Conv1d(6, 6, 3, padding=1, groups=2)
            self.dilated = torch.nn.Conv1d(6, 6, 3, dilation=2)
            self.fc = torch.nn.Linear(6, 5)

    sites = input_sites(Net(), seq2seq=False)
    assert set(sites) == {"conv1", "fc"}
    assert sites["conv1"].width == 12 and sites["conv1"].tensors == ["conv1.weight"] and not sites["conv1"].output
    assert sites["fc"].width == 6 and sites["fc"].tensors == ["fc.weight"]
