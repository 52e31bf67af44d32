"""Net2Wider as DrNAS widens partial-channel edges: old channels kept, new ones copies of old ones
chosen per the plan, the index shared where the reference shares it."""
import pytest
import torch

import supernets
from ops.candidates import FactorizedReduce, SepConv
from ops.net2wider import candidate_plan, supernet_plan, widen, widen_state
from supernets.darts import candidates_per_cell


def test_widen_appends_the_indexed_old_slices_per_dimension():
    t = torch.arange(6.0).reshape(2, 3)
    out = widen(t, {0: torch.tensor([1]), 1: torch.tensor([0, 0])})
    assert out.tolist() == [[0, 1, 2, 0, 0], [3, 4, 5, 3, 3], [3, 4, 5, 3, 3]]


def test_sep_conv_plan_chains_depthwise_into_pointwise_and_bn_follows_the_pointwise():
    g = torch.Generator().manual_seed(0)
    plan = candidate_plan(SepConv(6, 6, 3, 1, 1, affine=False), 4, 6, g)
    for block in ("0.", "1."):
        depthwise, pointwise = plan[f"{block}1.weight"], plan[f"{block}2.weight"]
        assert set(depthwise) == {0} and torch.equal(pointwise[1], depthwise[0])
        assert torch.equal(plan[f"{block}3.running_mean"][0], pointwise[0])
        assert torch.equal(plan[f"{block}3.running_var"][0], pointwise[0])
        assert all(len(i) == 2 and int(i.max()) < 4 for w in (depthwise, pointwise) for i in w.values())
    assert "0.3.weight" not in plan  # affine-free BN in the search


def test_factorized_reduce_bn_takes_both_halves_indices_unshifted_as_the_reference():
    g = torch.Generator().manual_seed(0)
    plan = candidate_plan(FactorizedReduce(6, 6, affine=False), 4, 6, g)
    first, second = plan["conv_1.weight"][0], plan["conv_2.weight"][0]
    assert int(first.max()) < 2 and int(second.max()) < 2
    assert torch.equal(plan["bn.running_mean"][0], torch.cat([first, second]))


def test_unknown_candidate_with_tensors_is_refused_by_name():
    with pytest.raises(ValueError, match="Linear"):
        candidate_plan(torch.nn.Linear(3, 3), 3, 4, torch.Generator())


def test_supernet_widens_every_tensor_to_the_new_shape_keeping_old_channels():
    space = supernets.get("darts")
    torch.manual_seed(0)
    old = space.build_supernet(C=12, layers=3, num_classes=3, in_channels=1, partial_channels=6)
    kept = {label: ops[1:5] for label, ops in old.choices.items()}  # none dropped, 4 kept
    new = space.build_supernet(C=12, layers=3, num_classes=3, in_channels=1, partial_channels=4,
                               edge_candidates=candidates_per_cell(kept))
    mapping = supernet_plan(old, new, torch.Generator().manual_seed(1))
    old_state, new_state = old.state_dict(), new.state_dict()
    widened = widen_state(old_state, new_state, mapping)
    assert set(widened) == set(new_state)
    for name, tensor in widened.items():
        source, widening = mapping[name]
        old_tensor = old_state[source]
        assert tensor.shape == new_state[name].shape
        assert torch.equal(tensor[tuple(slice(0, n) for n in old_tensor.shape)], old_tensor)
        for dim, index in widening.items():  # each appended slice is a copy of an old one
            start = old_tensor.shape[dim]
            for k, i in enumerate(index.tolist()):
                assert torch.equal(tensor.narrow(dim, start + k, 1), tensor.narrow(dim, i, 1))
    # a candidate keeps its name across the prune: edge 0's sep_conv_3x3 was op 4, now op 2
    label = next(iter(old.choices))
    j, k = old.choices[label].index("sep_conv_3x3"), new.choices[label].index("sep_conv_3x3")
    name = next(n for n in new_state if f".ops.{k}.0.1.weight" in n)
    assert mapping[name][0] == name.replace(f".ops.{k}.", f".ops.{j}.")


def test_a_candidate_the_old_edge_lacks_is_an_error():
    space = supernets.get("darts")
    old_kept = {label: ops[1:5] for label, ops in space.build_supernet(C=12, layers=3).choices.items()}
    old = space.build_supernet(C=12, layers=3, partial_channels=6, edge_candidates=candidates_per_cell(old_kept))
    new = space.build_supernet(C=12, layers=3, partial_channels=4)
    with pytest.raises(ValueError, match="which the old edge lacks"):
        supernet_plan(old, new, torch.Generator())

