"""Arch survives copy, deepcopy and pickle, and so does a module that holds one."""
import copy
import pickle

import supernets
from oneshot.retrain import RetrainModule
from supernets import Arch


def test_arch_copies_and_pickles_to_an_equal_arch():
    arch = supernets.get("darts").genotypes["DARTS_V2"]
    for clone in (copy.copy(arch), copy.deepcopy(arch), pickle.loads(pickle.dumps(arch))):
        assert clone == arch and hash(clone) == hash(arch) and clone.space == "darts"
    assert pickle.loads(pickle.dumps(Arch("nb201", {"1<-0": 3}))) == Arch("nb201", {"1<-0": 3})


def test_a_module_holding_an_arch_deep_copies():
    model = RetrainModule("DARTS_V2", network_options={"C": 4, "layers": 3}, num_classes=10, in_channels=1)
    clone = copy.deepcopy(model)
    assert clone.arch == model.arch and clone.network is not model.network
