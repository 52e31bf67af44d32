"""The ofa-mbv3 space: OFA's construction (counts from the construction rules, the flop
counter and the reference code), the canonical string, depth skipping, and extraction of static subnets whose
output equals the supernet's."""
import random

import pytest
import torch

import supernets
from supernets import Arch, count_parameters
from supernets.ofa_mbv3 import depth_label, extract_network, kernel_label, measured_cost

SPACE = supernets.get("ofa-mbv3")


@pytest.mark.parametrize("which, reference", [("largest", (7_664_760, 566_170_656)),
                                              ("smallest", (3_410_792, 121_278_672))])
def test_max_and_min_subnets_at_224_count_as_the_construction_rules_and_the_reference(which, reference):
    """Reference figures: mit-han-lab/once-for-all@f03b267 OFAMobileNetV3(ks 3,5,7, e 3,4,6,
    d 2,3,4) with set_active_subnet + get_active_subnet, counted with torch's flop counter."""
    arch = Arch("ofa-mbv3", {**dict(getattr(SPACE, which)()), "resolution": 224})
    assert pair(SPACE.cost(arch)) == pair(measured_cost(arch)) == reference


def pair(cost):
    return int(cost["params"]), int(cost["macs"])


@pytest.mark.parametrize("seed", range(3))
def test_the_rule_count_of_random_subnets_equals_the_flop_counter(seed):
    arch = SPACE.sample(random.Random(seed))
    assert pair(SPACE.cost(arch)) == pair(measured_cost(arch))
    options = {"base_widths": [8, 8, 16, 16, 24, 32, 40, 64, 96], "width_mult": 1.2, "in_channels": 1}
    assert pair(SPACE.cost(arch, num_classes=10, **options)) == pair(measured_cost(arch, 10, **options))


def test_the_supernet_holds_the_reference_parameter_count():
    assert count_parameters(SPACE.build_supernet()) == 7_678_880  # OFAMobileNetV3, 1000 classes


def test_canonical_string_round_trip_and_errors():
    arch = SPACE.sample(random.Random(0))
    text = SPACE.format(arch)
    assert SPACE.parse(text) == arch and supernets.resolve_arch(text)[1] == arch
    assert SPACE.format(SPACE.largest()) == "r224-d44444-k7777.7777.7777.7777.7777-e6666.6666.6666.6666.6666"
    with pytest.raises(ValueError, match="expected r<size>"):
        SPACE.parse("r224-d4444-k7")
    with pytest.raises(ValueError, match="stage1.block1.kernel = 4"):
        SPACE.parse("r224-d44444-k4777.7777.7777.7777.7777-e6666.6666.6666.6666.6666")
    with pytest.raises(ValueError, match="resolution 4"):
        SPACE.parse("r4-d44444-k7777.7777.7777.7777.7777-e6666.6666.6666.6666.6666")


def _randomised_supernet(**options):
    torch.manual_seed(0)
    supernet = SPACE.build_supernet(num_classes=10, **options)
    with torch.no_grad():
        for name, tensor in supernet.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                tensor.uniform_(-0.1, 0.1)
            elif "matrices" in name:
                tensor.add_(0.05 * torch.randn_like(tensor))
    return supernet.eval()


SMALL = {"base_widths": [8, 8, 8, 16, 16, 24, 24, 64, 96], "resolutions": [32, 48, 8]}


def test_extracted_networks_compute_what_the_supernet_computes_in_eval_mode():
    supernet = _randomised_supernet(**SMALL)
    rng = random.Random(0)
    archs = [SPACE.largest(supernet.choices), SPACE.smallest(supernet.choices)]
    archs += [SPACE.sample(rng, supernet.choices) for _ in range(4)]
    for arch in archs:
        x = torch.randn(2, 3, arch["resolution"], arch["resolution"])
        network = extract_network(supernet, arch)
        assert not any("matrices" in n for n, _ in network.named_parameters())  # no elastic machinery
        with torch.no_grad():
            torch.testing.assert_close(network(x), supernet(x, SPACE.decisions(arch)), rtol=1e-5, atol=1e-6)
        assert count_parameters(network) == SPACE.cost(arch, num_classes=10, base_widths=SMALL["base_widths"])["params"]


def test_skipped_blocks_do_not_run():
    supernet = _randomised_supernet(**SMALL)
    arch = Arch("ofa-mbv3", {**dict(SPACE.largest(supernet.choices)), depth_label(2): 2})
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = supernet(x, SPACE.decisions(arch))
        for block in list(supernet.stages[1])[2:]:
            for p in block.parameters():
                p.add_(1.0)
        torch.testing.assert_close(supernet(x, SPACE.decisions(arch)), before)
        deeper = Arch("ofa-mbv3", {**dict(arch), depth_label(2): 3})
        assert not torch.allclose(supernet(x, SPACE.decisions(deeper)), before)


def test_a_value_the_supernet_does_not_serve_is_named():
    supernet = SPACE.build_supernet(num_classes=10, kernel_sizes=(7,), **SMALL)
    arch = SPACE.largest(supernet.choices)
    with pytest.raises(ValueError, match="stage1.block1.kernel = 3 is not served"):
        supernet.check_decisions({**dict(arch), kernel_label(1, 1): 3})
