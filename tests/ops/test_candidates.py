"""Every registered op: shape at stride 1 and 2, and the exact reference constructions."""
import pytest
import torch
from torch import nn

from ops import build_candidate, candidate_names
from ops.candidates import DilConv, FactorizedReduce, Identity, SepConv, Zero

DARTS_OPS = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5"]
NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


@pytest.mark.parametrize("name", candidate_names())
@pytest.mark.parametrize("stride", [1, 2])
def test_every_candidate_keeps_channels_and_strides(name, stride):
    op = build_candidate(name, 8, stride, affine=False)
    y = op(torch.randn(2, 8, 8, 8))
    assert y.shape == (2, 8, 8 // stride, 8 // stride)


def test_published_names_are_registered():
    assert set(DARTS_OPS + NB201_OPS) <= set(candidate_names())


def test_unknown_op_names_the_accepted_ones():
    with pytest.raises(KeyError, match="sep_conv_3x3"):
        build_candidate("sep_conv_9x9", 8, 1, False)


def _params(module):
    return sum(p.numel() for p in module.parameters())


def test_sep_conv_is_two_stacked_blocks():
    C = 8
    op = build_candidate("sep_conv_3x3", C, 2, affine=True)
    assert isinstance(op, SepConv) and len(op) == 2
    first, second = op
    assert first[1].stride == (2, 2) and second[1].stride == (1, 1)  # only the first block strides
    # 2 x (depthwise 3x3 + pointwise 1x1 + BN affine)
    assert _params(op) == 2 * (C * 9 + C * C + 2 * C)
    assert all(m.bias is None for m in op.modules() if isinstance(m, nn.Conv2d))


def test_dil_conv_dilation_and_padding():
    op = build_candidate("dil_conv_5x5", 8, 1, affine=False)
    assert isinstance(op, DilConv)
    assert op[1].dilation == (2, 2) and op[1].padding == (4, 4) and op[1].groups == 8
    assert _params(op) == 8 * 25 + 8 * 8  # no BN parameters when affine=False


def test_skip_connect_is_identity_or_factorized_reduce():
    assert isinstance(build_candidate("skip_connect", 8, 1, False), Identity)
    reduce = build_candidate("skip_connect", 8, 2, False)
    assert isinstance(reduce, FactorizedReduce)
    x = torch.randn(1, 8, 6, 6)
    # the second branch sees the input shifted by one pixel
    x2 = x.clone()
    x2[:, :, 0, :] += 5
    x2[:, :, :, 0] += 5
    reduce.eval()
    assert torch.allclose(reduce(x)[:, 4:], reduce(x2)[:, 4:])  # row/col 0 never reach the shifted branch


def test_none_is_zero_with_stride():
    y = build_candidate("none", 4, 2, False)(torch.randn(1, 4, 8, 8))
    assert isinstance(build_candidate("none", 4, 2, False), Zero)
    assert y.shape == (1, 4, 4, 4) and torch.count_nonzero(y) == 0


def test_avg_pool_excludes_padding():
    op = build_candidate("avg_pool_3x3", 1, 1, False)
    y = op(torch.ones(1, 1, 4, 4))
    assert torch.allclose(y, torch.ones_like(y))  # count_include_pad=False keeps borders at 1


def test_nb201_conv_bias_is_not_affine():
    search = build_candidate("nor_conv_3x3", 4, 1, affine=False)
    standalone = build_candidate("nor_conv_3x3", 4, 1, affine=True)
    assert search[1].bias is not None and standalone[1].bias is None
    assert isinstance(search[0], nn.ReLU) and isinstance(search[2], nn.BatchNorm2d)
