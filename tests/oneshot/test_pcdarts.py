"""PC-DARTS: edge normalization, genotype, warm-up, and a search end to end on digits."""
import json
import os

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import supernets
from oneshot.checkpoints import check_checkpoint_identity
from oneshot.algorithms.darts import DartsSearch
from oneshot.algorithms.pcdarts import PCDartsSearch
from supernets.labels import node_of as edge_node
from oneshot.commands import main
from oneshot.data import DigitsDataModule
from ops.mixed import PartialChannelMixedOp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_CONFIG = os.path.join(ROOT, "experiments", "pcdarts_nb201_digits_cpu.yaml")
SPACES = [("nb201", {"C": 4, "N": 1}), ("darts", {"C": 4, "layers": 3})]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0.1"]


def _model(space="nb201", options=None, **kw):
    torch.manual_seed(0)
    options = options if options is not None else dict(SPACES)[space]
    return PCDartsSearch(space=space, space_options=options, num_classes=10, in_channels=1, **kw)


def _set(params, values):
    with torch.no_grad():
        for label, value in values.items():
            params[label].copy_(torch.as_tensor(value, dtype=params[label].dtype))


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_partial_channels_reach_the_supernet(space):
    model = _model(space, partial_channels=2)
    assert model.hparams.space_options["partial_channels"] == 2
    edges = [m for m in model.supernet.modules() if isinstance(m, PartialChannelMixedOp)]
    assert edges and all(m.partial_channels == 2 for m in edges)
    assert list(model.betas) == list(model.alphas) == list(model.supernet.edges)
    assert all(b.shape == () for b in model.betas.values())
    assert model.architecture_parameters() == list(model.alphas.values()) + list(model.betas.values())
    with pytest.raises(ValueError, match="partial_channels=2 differs"):
        _model(space, {**dict(SPACES)[space], "partial_channels": 2}, partial_channels=4)


def test_edge_node_groups_by_the_text_before_the_arrow():
    assert edge_node("normal/3<-1") == "normal/3" and edge_node("3<-1") == "3"
    with pytest.raises(ValueError, match="'normal/3'"):
        edge_node("normal/3")


@pytest.mark.parametrize("space, changed, unaffected", [("nb201", "3<-1", "2"), ("darts", "normal/3<-1", "normal/2")])
def test_edge_normalization_is_a_softmax_over_each_nodes_incoming_edges(space, changed, unaffected):
    model = _model(space)
    _set(model.betas, {label: 0.3 * k for k, label in enumerate(model.betas)})  # all different
    before = {k: v.detach().clone() for k, v in model.edge_normalization().items()}
    for node, labels in model.node_edges.items():
        assert all(edge_node(label) == node for label in labels)
        assert torch.allclose(sum(before[label] for label in labels), torch.tensor(1.0))
        expected = torch.softmax(torch.stack([model.betas[label].detach() for label in labels]), 0)
        assert torch.allclose(torch.stack([before[label] for label in labels]), expected)
    assert len(model.node_edges) == {"nb201": 3, "darts": 8}[space]
    _set(model.betas, {changed: 5.0})
    after = model.edge_normalization()
    node = edge_node(changed)
    for label in model.betas:
        moved = not torch.allclose(after[label], before[label])
        assert moved == (edge_node(label) == node), label  # only the changed node's edges move
    assert all(torch.equal(after[label], before[label]) for label in model.node_edges[unaffected])
    weights = model.arch_weights()
    for label, alpha in model.alphas.items():  # what every consumer sees
        assert torch.allclose(weights[label], torch.softmax(alpha, -1) * after[label])


def test_nb201_single_input_node_has_weight_one():
    model = _model("nb201")
    _set(model.betas, {"1<-0": -4.0})
    assert model.edge_normalization()["1<-0"].item() == 1.0


def test_genotype_uses_edge_normalized_weights():
    """Node normal/3: the plain-alpha rule keeps inputs 0 and 1; a small beta on edge 0 drops it."""
    model = _model("darts")
    space = supernets.get("darts")
    ops = space.primitives
    _set(model.alphas, {label: torch.zeros(len(ops)) for label in model.alphas})
    _set(model.betas, {label: 0.0 for label in model.betas})
    alpha = {"normal/3<-0": ("sep_conv_3x3", 3.0), "normal/3<-1": ("dil_conv_3x3", 2.0),
             "normal/3<-2": ("max_pool_3x3", 1.0)}
    _set(model.alphas, {label: F.one_hot(torch.tensor(ops.index(op)), len(ops)).float() * value
                        for label, (op, value) in alpha.items()})
    _set(model.betas, {"normal/3<-0": -3.0})
    # W = softmax(alpha) * beta_hat: edge 0 0.742 * 0.024 = 0.018, edge 1 0.513 * 0.488 = 0.25,
    # edge 2 0.280 * 0.488 = 0.137 (model_search.py Network.genotype._parse)
    plain = space.discretize({label: torch.softmax(a.detach(), -1) for label, a in model.alphas.items()})
    assert plain["normal/3"] == ((ops.index("sep_conv_3x3"), 0), (ops.index("dil_conv_3x3"), 1))
    arch = model.export()
    assert arch["normal/3"] == ((ops.index("dil_conv_3x3"), 1), (ops.index("max_pool_3x3"), 2))
    for label in space.genotypes["DARTS_V2"]:  # the other nodes are unchanged by equal betas
        if label != "normal/3":
            assert arch[label] == plain[label]


def test_architecture_step_does_nothing_during_warm_up():
    model = _model("nb201")  # no trainer: epoch 0 < 15
    before = [p.detach().clone() for p in model.architecture_parameters()]
    assert model.architecture_step(None, None) is None  # would fail on the batches if it ran
    assert all(torch.equal(p, b) for p, b in zip(model.architecture_parameters(), before))


class _Snapshots(L.Callback):
    def __init__(self):
        self.alphas, self.betas = [], []

    def on_train_epoch_end(self, trainer, model):
        self.alphas.append(torch.cat([a.detach().flatten() for a in model.alphas.values()]).clone())
        self.betas.append(torch.stack([b.detach() for b in model.betas.values()]).clone())


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_architecture_is_updated_from_the_warm_up_epoch_on(space, tmp_path):
    model = _model(space, arch_warmup_epochs=1)
    alphas0 = torch.cat([a.detach().flatten() for a in model.alphas.values()]).clone()
    betas0 = torch.stack([b.detach() for b in model.betas.values()]).clone()
    snapshots = _Snapshots()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[snapshots])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert torch.equal(snapshots.alphas[0], alphas0) and torch.equal(snapshots.betas[0], betas0)
    assert not torch.equal(snapshots.alphas[1], alphas0)
    changed_betas = snapshots.betas[1] != betas0
    multi_input = torch.tensor([len(model.node_edges[edge_node(label)]) > 1 for label in model.betas])
    assert changed_betas[multi_input].all()  # every beta with a say in its node's softmax moved


def test_checkpoint_identity_differs_from_darts():
    pc, darts = _model("nb201"), DartsSearch(space="nb201", space_options={"C": 4, "N": 1})
    with pytest.raises(ValueError, match="algorithm is 'DartsSearch'"):
        check_checkpoint_identity({"oneshot": darts.checkpoint_identity()}, pc.checkpoint_identity())


def _run_dir(root):
    return os.path.join(root, sorted(os.listdir(root))[-1])


@pytest.mark.parametrize("space, extra", [
    ("nb201", ["--model.init_args.space_options", "{C: 4, N: 1}", "--trainer.max_epochs", "2",
               "--model.init_args.arch_warmup_epochs", "1"]),
    ("darts", ["--model.init_args.space", "darts", "--model.init_args.space_options", "{C: 4, layers: 3}",
               "--trainer.max_epochs", "1", "--model.init_args.arch_warmup_epochs", "0"]),
])
def test_cli_search_with_the_cpu_config(space, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["search", "--config", CPU_CONFIG, *QUIET, *extra])
    run = _run_dir(os.path.join("runs", "pcdarts_nb201_digits_cpu"))
    ckpt = os.path.join(run, "checkpoints", "last.ckpt")
    record = json.load(open(os.path.join(run, "arch.json")))
    assert record["space"] == space and record["algorithm"] == "PCDartsSearch"
    space_obj = supernets.get(space)
    arch = space_obj.load(os.path.join(run, "arch.json"))
    model = PCDartsSearch.load_from_checkpoint(ckpt)
    assert model.hparams.partial_channels == 4 and model.space.name == space
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["oneshot"]["algorithm"] == "PCDartsSearch"
    assert model.export() == arch  # alphas and betas were restored
    events = EventAccumulator(run)
    events.Reload()
    first_edge = next(iter(space_obj.build_supernet(C=4, **({"N": 1} if space == "nb201" else {"layers": 3})).edges))
    assert f"edge_norm/{first_edge}" in events.Tags()["scalars"]
    assert "arch_loss" in events.Tags()["scalars"]  # the architecture was stepped after warm-up
    capsys.readouterr()
    main(["info", "--space", space, "--arch", os.path.join(run, "arch.json")])
    assert space_obj.format(arch) in capsys.readouterr().out


def test_auto_layout_avoids_the_tiny_strided_conv_crash_on_cpu():
    """torch 2.14 CPU: channels_last backward of a 1x1 stride-2 conv with 2..6 inputs corrupts the heap."""
    assert _model("darts").input_memory_format() is torch.contiguous_format  # reduce edges: 8 // 4 = 2
    assert _model("darts", {"C": 32, "layers": 3}).input_memory_format() is torch.channels_last
    assert _model("nb201").input_memory_format() is torch.channels_last  # no strided edges
    assert _model("darts", memory_format="channels_last").input_memory_format() is torch.channels_last
