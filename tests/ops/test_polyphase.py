"""The polyphase dilated depthwise convolution equals ``nn.Conv2d`` in outputs and gradients."""
import pytest
import torch
from torch import nn

from ops import kernels
from ops.candidates import DilConv
from ops.polyphase import DilatedDepthwiseConv2d


def _pair_of_convs(C: int, k: int, stride: int, dilation: int):
    padding = dilation * (k - 1) // 2
    plain = nn.Conv2d(C, C, k, stride, padding, dilation=dilation, groups=C, bias=False).double()
    poly = DilatedDepthwiseConv2d(C, C, k, stride, padding, dilation=dilation, groups=C, bias=False).double()
    poly.load_state_dict(plain.state_dict())
    return plain, poly


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("dilation", [2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("size", [(8, 12), (7, 9), (1, 1), (6, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_and_gradients_equal_plain_convolution(k, dilation, stride, size, channels_last):
    torch.manual_seed(0)
    plain, poly = _pair_of_convs(4, k, stride, dilation)
    x = torch.randn(3, 4, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_plain, x_poly = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_plain, y_poly = plain(x_plain), poly(x_poly)
    assert y_poly.shape == y_plain.shape
    torch.testing.assert_close(y_poly, y_plain, rtol=0, atol=1e-12)
    grad_out = torch.randn_like(y_plain)
    y_plain.backward(grad_out)
    y_poly.backward(grad_out)
    torch.testing.assert_close(x_poly.grad, x_plain.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(poly.weight.grad, plain.weight.grad, rtol=0, atol=1e-12)
    if channels_last and poly._polyphase_route(x) is not None:
        assert y_poly.is_contiguous(memory_format=torch.channels_last)


def test_routes_follow_stride_size_and_switch():
    _, poly = _pair_of_convs(4, 3, 1, 2)
    assert poly._polyphase_route(torch.zeros(1, 4, 8, 8)) == "split"
    assert poly._polyphase_route(torch.zeros(1, 4, 7, 8)) is None  # odd size, stride 1
    with kernels.use_fused(False):
        assert poly._polyphase_route(torch.zeros(1, 4, 8, 8)) is None
    _, strided = _pair_of_convs(4, 5, 2, 2)
    assert strided._polyphase_route(torch.zeros(1, 4, 7, 7)) == "subsample"


def test_dil_conv_state_dict_is_unchanged():
    """Checkpoints written before the polyphase path load into DilConv unchanged."""
    op = DilConv(4, 6, 3, 1, 2, 2)
    assert isinstance(op[1], DilatedDepthwiseConv2d)
    assert [(name, tuple(t.shape)) for name, t in op.state_dict().items()][:2] == [
        ("1.weight", (4, 1, 3, 3)), ("2.weight", (6, 4, 1, 1))]


def test_saves_only_its_input():
    """The split copy is recomputed in backward: what is saved is x and the weight, as nn.Conv2d."""
    _, poly = _pair_of_convs(4, 3, 1, 2)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        poly(x)
    assert {t.data_ptr() for t in saved} == {x.data_ptr(), poly.weight.data_ptr()}


def test_double_backward_matches_plain_convolution():
    plain, poly = _pair_of_convs(3, 3, 1, 2)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: poly(t), (x,))
    grads = [torch.autograd.grad(m(x).square().sum(), x, create_graph=True)[0].sum() for m in (plain, poly)]
    torch.testing.assert_close(torch.autograd.grad(grads[1], x)[0], torch.autograd.grad(grads[0], x)[0])
