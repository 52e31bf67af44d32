"""The order of the two DARTS steps (``arch_step_first``) and gradient clipping of the weight step,
in search (``SupernetTraining.weight_step``) and in retraining (``RetrainModule``), each checked
against an independent computation of the same step."""
import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from oneshot.algorithms import DartsSearch
from oneshot.retrain import RetrainModule

NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def _batch(seed, n=6, classes=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def _search_model(**options):
    torch.manual_seed(0)
    model = DartsSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=3, in_channels=1,
                        **options).double()
    with torch.no_grad():  # a decided distribution: the weights matter to the alpha gradient
        for alpha in model.alphas.values():
            alpha.copy_(torch.randn_like(alpha))
    return model


def _with_optimizers(model):
    """The optimizers set up as fit sets them up (a fit without batches), so that the model's own
    steps run with a trainer attached; in train mode, as in training."""
    L.Trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, **QUIET).fit(
        model, train_dataloaders=DataLoader([0]))
    return model.train()


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _alpha_gradient(model, batch):
    """dL(batch)/dalpha of the dense supernet, apart from the model's own code path."""
    alphas = [a.detach().clone().requires_grad_() for a in model.alphas.values()]
    decisions = {k: torch.softmax(a, -1) for k, a in zip(model.alphas.keys(), alphas)}
    return torch.cat(torch.autograd.grad(F.cross_entropy(model.supernet(batch[0], decisions), batch[1]), alphas))


# -- step order ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch_step_first", [True, False])
def test_arch_step_first_decides_which_weights_the_architecture_gradient_sees(arch_step_first, monkeypatch):
    """True (DARTS, NB201 DARTS-V2): dL_val/dalpha at the weights before this step's weight update;
    False (NB201 DARTS-V1): at the weights after it."""
    model = _with_optimizers(_search_model(arch_step_first=arch_step_first, learning_rate=0.5,
                                           momentum=0.0, weight_decay=0.0))
    train, val = _batch(1), _batch(2)
    before = copy.deepcopy(model)
    monkeypatch.setattr(model, "log", lambda *a, **k: None)  # no loop to log into
    monkeypatch.setattr(model, "log_dict", lambda *a, **k: None)

    seen = []  # (which batch, the supernet weights the loss was computed with)
    own_loss = model.loss_and_accuracy

    def recording_loss(batch, decisions):
        seen.append(("val" if batch is val else "train", _flat(model.supernet).clone()))
        return own_loss(batch, decisions)

    alpha_grads = []
    own_step = model.architecture_step

    def recording_step(train_batch, val_batch):
        loss = own_step(train_batch, val_batch)
        alpha_grads.append(torch.cat([a.grad.detach().flatten().clone() for a in model.alphas.values()]))
        return loss

    monkeypatch.setattr(model, "loss_and_accuracy", recording_loss)
    monkeypatch.setattr(model, "architecture_step", recording_step)
    model.training_step({"train": train, "val": val}, 0)

    initial, final = _flat(before.supernet), _flat(model.supernet)
    assert not torch.allclose(initial, final)  # the weight step moved the weights
    assert [which for which, _ in seen] == (["val", "train"] if arch_step_first else ["train", "val"])
    val_weights = dict(seen)["val"]
    assert torch.equal(val_weights, initial if arch_step_first else final)

    # the gradient the architecture step used, recomputed at the old and at the new weights (both
    # with the alphas before the step)
    at_old = _alpha_gradient(copy.deepcopy(before), val)
    moved = copy.deepcopy(before)
    moved.supernet.load_state_dict(model.supernet.state_dict())
    at_new = _alpha_gradient(moved, val)
    assert not torch.allclose(at_old, at_new, rtol=1e-2)  # the order makes a difference here
    expected, other = (at_old, at_new) if arch_step_first else (at_new, at_old)
    assert len(alpha_grads) == 1
    assert torch.allclose(alpha_grads[0], expected, rtol=1e-8, atol=1e-12)
    assert not torch.allclose(alpha_grads[0], other, rtol=1e-2)


# -- gradient clipping ---------------------------------------------------------------------------
def _sgd_reference(params, grads, clip, lr, momentum, weight_decay, nesterov=False):
    """One torch SGD step of ``params`` with ``grads`` clipped to total norm ``clip`` (0: off)."""
    params = [p.detach().clone().requires_grad_() for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov).step()
    return params


def _grad_norm(grads):
    return torch.cat([g.flatten() for g in grads]).norm().item()


@pytest.mark.parametrize("grad_clip", [1e-3, 0.0])
def test_search_weight_step_is_sgd_with_the_gradient_clipped_to_grad_clip(grad_clip):
    model = _with_optimizers(_search_model(grad_clip=grad_clip, learning_rate=0.1, momentum=0.9,
                                           weight_decay=3e-4))
    train = _batch(1)
    before = copy.deepcopy(model)
    names = [n for n, _ in before.supernet.named_parameters()]
    params = list(before.supernet.parameters())
    decisions = {k: torch.softmax(a.detach(), -1) for k, a in before.alphas.items()}
    grads = torch.autograd.grad(F.cross_entropy(before.supernet(train[0], decisions), train[1]), params)
    assert _grad_norm(grads) > 100 * 1e-3  # clipping to 1e-3 changes this step a lot
    h = model.hparams
    clipped = _sgd_reference(params, grads, grad_clip, h.learning_rate, h.momentum, h.weight_decay)
    unclipped = _sgd_reference(params, grads, 0.0, h.learning_rate, h.momentum, h.weight_decay)

    model.weight_step(train)

    for name, w, c, u in zip(names, model.supernet.parameters(), clipped, unclipped):
        assert torch.allclose(w, c, rtol=1e-9, atol=1e-12), name
    moved = torch.cat([(w - u).flatten() for w, u in zip(model.supernet.parameters(), unclipped)])
    assert (moved.abs().max() > 1e-4) == bool(grad_clip)  # 0 turns clipping off


@pytest.mark.parametrize("grad_clip", [1e-3, 0.0])
def test_retrain_step_is_sgd_with_the_gradient_clipped_to_grad_clip(grad_clip):
    """RetrainModule clips in configure_gradient_clipping (DARTS train.py clip_grad_norm_)."""
    torch.manual_seed(0)
    model = RetrainModule(NB201_ARCH, network_options={"C": 4, "N": 1}, num_classes=3, in_channels=1,
                          grad_clip=grad_clip, learning_rate=0.1, momentum=0.9, weight_decay=3e-4,
                          nesterov=True)
    x, y = _batch(1, n=16, dtype=torch.float32)
    network = copy.deepcopy(model.network).train()  # (a RetrainModule holds an Arch: no deepcopy)
    names = [n for n, _ in network.named_parameters()]
    params = list(network.parameters())
    grads = torch.autograd.grad(F.cross_entropy(network(x), y), params)
    assert _grad_norm(grads) > 100 * 1e-3
    h = model.hparams
    clipped = _sgd_reference(params, grads, grad_clip, h.learning_rate, h.momentum, h.weight_decay, True)
    unclipped = _sgd_reference(params, grads, 0.0, h.learning_rate, h.momentum, h.weight_decay, True)

    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, **QUIET)  # one batch: one step
    trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=16))
    assert trainer.global_step == 1

    for name, w, c, u in zip(names, model.network.parameters(), clipped, unclipped):
        assert torch.allclose(w, c, rtol=1e-5, atol=1e-7), name
    moved = torch.cat([(w - u).flatten() for w, u in zip(model.network.parameters(), unclipped)])
    assert (moved.abs().max() > 1e-4) == bool(grad_clip)


def test_per_tensor_clipping_clips_each_gradient_on_its_own(tmp_path):
    """ENAS's TF clip_mode "norm": every tensor's gradient to the bound by itself, unlike the global
    norm that scales all of them by one factor."""
    import lightning as L
    from oneshot.algorithms import RandomSinglePathSearch
    from oneshot.data import DigitsDataModule

    seen = {}

    class Recording(RandomSinglePathSearch):
        def after_weight_backward(self):
            for p in self.supernet.parameters():
                if p.grad is not None:
                    p.grad.mul_(1000.0)  # every gradient far over the bound
            seen["before"] = [p.grad.norm().item() for p in self.supernet.parameters() if p.grad is not None]

    L.seed_everything(0)
    model = Recording(space="nb201", space_options={"C": 4, "N": 1}, num_classes=10, in_channels=1,
                      grad_clip=0.5, grad_clip_per_tensor=True, selection_samples=1, learning_rate=0.0)
    original = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen["after"] = [p.grad.norm().item() for g in self.param_groups for p in g["params"] if p.grad is not None]
        return original(self, *args, **kwargs)

    torch.optim.SGD.step = recording_step
    try:
        trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)  # its arch.json goes there, not into the checkout
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    finally:
        torch.optim.SGD.step = original
    assert all(b > 0.5 for b in seen["before"] if b > 1e-3)
    assert all(abs(a - 0.5) < 1e-4 for a in seen["after"] if a > 1e-3)  # each at the bound, not scaled together
