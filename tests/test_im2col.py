"""Calibration's float64 grouped convolutions by im2col (apot_utils.fakequant.im2col) equal torch's."""
import torch
from torch import nn

from apot_utils.fakequant.im2col import im2col_convolutions


def test_im2col_convolutions_equal_torchs_and_are_removed_on_exit():
    torch.manual_seed(0)
    layers = [nn.Conv2d(16, 32, 3, 2, 1, groups=4, bias=True), nn.Conv2d(8, 8, 3, 1, 2, dilation=2, groups=8),
              nn.Conv2d(6, 4, (3, 5), (1, 2), (1, 2), groups=2, padding_mode="reflect"), nn.Conv2d(4, 4, 3, padding="same", groups=2)]
    for layer in layers:
        layer = layer.double()
        x = torch.randn(3, layer.in_channels, 17, 19, dtype=torch.float64)
        expected = layer(x)
        with im2col_convolutions(layer):
            assert "_conv_forward" in layer.__dict__
            got = layer(x)
        assert "_conv_forward" not in layer.__dict__
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    plain = nn.Conv2d(3, 4, 3)
    with im2col_convolutions(plain):
        assert "_conv_forward" not in plain.__dict__           # ungrouped: torch's own
