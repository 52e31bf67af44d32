"""OFA's elastic width: sliced BN (parameters and running statistics, updated in place), sliced
1x1 convs and SE, and the channel re-ordering that must leave the full-width function unchanged
while keeping already-trained narrower widths inside their bands."""
import torch
from torch import nn

from ops.elastic import ElasticBatchNorm2d, ElasticMBConv, ElasticSqueezeExcite, middle_channels
from ops.mobilenet import SqueezeExcite, make_divisible


def test_make_divisible_follows_the_tf_rule():
    assert [make_divisible(v) for v in (16, 16 * 1.2, 24 * 1.2, 960 * 1.2, 3, 44)] == [16, 24, 32, 1152, 8, 48]
    assert middle_channels(24, 3) == 72 and middle_channels(40, 4) == 160 and middle_channels(112, 6) == 672


def test_a_narrow_input_uses_and_updates_the_first_channels_of_the_batchnorm():
    torch.manual_seed(0)
    elastic = ElasticBatchNorm2d(8)
    with torch.no_grad():
        elastic.weight.uniform_(0.5, 1.5), elastic.bias.uniform_(-1, 1)
        elastic.running_mean.uniform_(-1, 1), elastic.running_var.uniform_(0.5, 2)
    plain = nn.BatchNorm2d(5)
    plain.load_state_dict({k: (v[:5] if v.dim() else v) for k, v in elastic.state_dict().items()})
    before = elastic.running_mean.clone()
    x = torch.randn(4, 5, 3, 3)
    torch.testing.assert_close(elastic(x), plain(x))  # train mode: batch statistics
    torch.testing.assert_close(elastic.running_mean[:5], plain.running_mean)
    torch.testing.assert_close(elastic.running_var[:5], plain.running_var)
    assert torch.equal(elastic.running_mean[5:], before[5:]) and not torch.equal(elastic.running_mean[:5], before[:5])
    elastic.eval(), plain.eval()
    torch.testing.assert_close(elastic(x), plain(x))  # eval mode: the sliced running statistics


def test_the_squeeze_excite_slices_its_hidden_width_from_the_active_channels():
    torch.manual_seed(0)
    elastic = ElasticSqueezeExcite(96)
    x = torch.randn(2, 64, 4, 4)
    hidden = make_divisible(64 // 4)
    plain = SqueezeExcite(64, hidden)
    with torch.no_grad():
        plain.reduce.weight.copy_(elastic.reduce.weight[:hidden, :64]), plain.reduce.bias.copy_(elastic.reduce.bias[:hidden])
        plain.expand.weight.copy_(elastic.expand.weight[:64, :hidden]), plain.expand.bias.copy_(elastic.expand.bias[:64])
    torch.testing.assert_close(elastic(x), plain(x))


def _randomised(block: ElasticMBConv) -> ElasticMBConv:
    with torch.no_grad():
        for name, tensor in block.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point() and "matrices" not in name:
                tensor.normal_()
    return block


def test_reordering_leaves_the_full_width_function_unchanged_and_keeps_the_narrower_bands():
    torch.manual_seed(0)
    block = _randomised(ElasticMBConv(16, 16, (3, 5, 7), (3, 4, 6), 1, "h_swish", True)).double().eval()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)  # float64: summation order changes with the order
    full = block(x, 7, 6)
    narrow = set(block.project_conv.conv.weight[:, :middle_channels(16, 4)].abs().sum((0, 2, 3)).tolist())
    order = block.reorder_middle(band_stage=1)  # expand 4 and 6 trained: 4's channels stay first
    torch.testing.assert_close(block(x, 7, 6), full)
    assert sorted(order.tolist()) == list(range(96))
    assert set(order[:64].tolist()) == set(range(64))  # the e=4 band (64 channels) kept its channels
    kept = block.project_conv.conv.weight[:, :64].abs().sum((0, 2, 3))
    assert set(kept.tolist()) == narrow and torch.all(kept[:-1] >= kept[1:])  # sorted inside the band
    block.reorder_middle(band_stage=0)  # no bands: the most important channels first, overall
    importance = block.project_conv.conv.weight.abs().sum((0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    torch.testing.assert_close(block(x, 7, 6), full)


def test_extract_gives_the_static_block_of_a_choice():
    torch.manual_seed(0)
    block = _randomised(ElasticMBConv(24, 40, (3, 5, 7), (3, 4, 6), 2, "relu", True))
    with torch.no_grad():
        for matrix in block.depth_conv.matrices.values():
            matrix.add_(0.1 * torch.randn_like(matrix))
    block.eval()
    x = torch.randn(2, 24, 9, 9)
    for k, e in ((3, 3), (5, 4), (7, 6)):
        static = block.extract(k, e).eval()
        assert static.depth_conv.conv.kernel_size == (k, k)
        assert static.depth_conv.conv.out_channels == middle_channels(24, e)
        torch.testing.assert_close(static(x), block(x, k, e))
