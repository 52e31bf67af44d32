"""OFA's elastic depthwise kernel: identity matrices give the centre crop, a learned matrix
transforms the flattened kernel as F.linear does, 3x3 comes from the transformed 5x5, padding is
"same", and the first channels serve a narrower input."""
import pytest
import torch
import torch.nn.functional as F

from ops.elastic import ElasticDepthwiseConv2d, centre


def test_identity_matrices_give_the_centre_crop_and_same_padding():
    torch.manual_seed(0)
    conv = ElasticDepthwiseConv2d(4, (3, 5, 7))
    x = torch.randn(2, 4, 9, 9)
    for k in (3, 5, 7):
        expected = F.conv2d(x, centre(conv.weight, k), None, 1, k // 2, 1, 4)
        torch.testing.assert_close(conv(x, k), expected)
        assert conv(x, k).shape == x.shape


def test_the_3x3_kernel_is_the_centre_of_the_transformed_5x5():
    torch.manual_seed(0)
    conv = ElasticDepthwiseConv2d(3, (3, 5, 7))
    with torch.no_grad():
        conv.matrices["7to5"].copy_(torch.randn(25, 25))
        conv.matrices["5to3"].copy_(torch.randn(9, 9))
    five = (centre(conv.weight, 5).reshape(3, 25) @ conv.matrices["7to5"].T).view(3, 1, 5, 5)
    three = (centre(five, 3).reshape(3, 9) @ conv.matrices["5to3"].T).view(3, 1, 3, 3)
    torch.testing.assert_close(conv.active_weight(3, 5), five)
    torch.testing.assert_close(conv.active_weight(3, 3), three)
    torch.testing.assert_close(conv.active_weight(3, 7), conv.weight)
    plain = ElasticDepthwiseConv2d(3, (3, 5, 7), transform=False)
    torch.testing.assert_close(plain.active_weight(3, 3), centre(plain.weight, 3))


def test_gradients_reach_the_matrices_used_and_narrow_inputs_use_the_first_channels():
    torch.manual_seed(0)
    conv = ElasticDepthwiseConv2d(6, (3, 5, 7), stride=2)
    x = torch.randn(2, 4, 8, 8)
    y = conv(x, 3)
    assert y.shape == (2, 4, 4, 4)
    y.sum().backward()
    assert conv.matrices["7to5"].grad is not None and conv.matrices["5to3"].grad is not None
    assert conv.weight.grad[4:].abs().sum() == 0  # channels 4 and 5 were not used
    conv.zero_grad()
    conv(x, 5).sum().backward()
    assert conv.matrices["5to3"].grad is None  # the 5x5 kernel stops at the first matrix


@pytest.mark.parametrize("kernel, channels", [(4, 2), (9, 2), (3, 7)])
def test_bad_choices_are_named(kernel, channels):
    conv = ElasticDepthwiseConv2d(6, (3, 5, 7))
    with pytest.raises(ValueError, match="serves"):
        conv.active_weight(channels, kernel)
