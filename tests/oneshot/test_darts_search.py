"""DARTS updates: the first-order architecture step (Adam on the validation gradient) and the
second-order gradient against an exact Hessian-vector product."""
import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import DataLoader

from oneshot.algorithms import DartsSearch
from ops.kernels import use_fused


def _tiny_model(unrolled=True):
    torch.manual_seed(0)
    model = DartsSearch(space="nb201", space_options={"C": 4, "N": 1}, num_classes=3, in_channels=1,
                        unrolled=unrolled, weight_decay=3e-4, momentum=0.9, learning_rate=0.1)
    model = model.double()
    with torch.no_grad():  # a decided distribution makes the Hessian term large
        for alpha in model.alphas.values():
            alpha.copy_(torch.randn_like(alpha))
    return model


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)


def test_second_order_gradient_matches_exact_hessian_vector_product():
    model = _tiny_model()
    train, val = _batch(1), _batch(2)
    h = model.hparams
    optimizer = torch.optim.SGD(model.supernet.parameters(), lr=h.learning_rate, momentum=h.momentum,
                                weight_decay=h.weight_decay)
    # one real step so that momentum buffers exist and enter the virtual step
    F.cross_entropy(model(train[0]), train[1]).backward()
    optimizer.step()
    optimizer.zero_grad()

    alphas = model.architecture_parameters()
    names = [n for n, _ in model.supernet.named_parameters()]
    weights = [p for _, p in model.supernet.named_parameters()]
    before = [w.detach().clone() for w in weights]

    def loss(params, batch):
        decisions = {k: torch.softmax(a, -1) for k, a in zip(model.alphas.keys(), alphas)}
        return F.cross_entropy(functional_call(model.supernet, params, (batch[0], decisions)), batch[1])

    # exact: d/dalpha L_val(w - xi (m*buf + dL_train/dw + wd w), alpha)
    params = dict(zip(names, weights))
    with use_fused(False):  # the exact product differentiates twice: the fused ops' backward is not differentiable
        train_grads = torch.autograd.grad(loss(params, train), weights, create_graph=True)
        virtual = {n: w - h.learning_rate * (h.momentum * optimizer.state[w]["momentum_buffer"] + g
                                             + h.weight_decay * w)
                   for n, w, g in zip(names, weights, train_grads)}
        exact = torch.autograd.grad(loss(virtual, val), alphas)
    first_order = torch.autograd.grad(loss(params, val), alphas)

    # ReLU kinks make a finite difference of a gradient jump; in float64 a tiny step stays between
    # kinks, so the implementation must then agree with the exact product to many digits
    model.hparams.hessian_epsilon = 1e-7
    model.unrolled_arch_gradient(train, val, optimizer)
    ours = [a.grad for a in alphas]

    for w, w0 in zip(weights, before):
        assert torch.equal(w, w0)  # weights restored exactly after the virtual step
    exact_flat, ours_flat = torch.cat(exact), torch.cat(ours)
    first_flat = torch.cat(first_order)
    # the Hessian term is not negligible here, so a first-order answer would fail
    assert (exact_flat - first_flat).norm() > 1e-2 * exact_flat.norm()
    assert torch.allclose(ours_flat, exact_flat, rtol=1e-4, atol=1e-7), (ours_flat - exact_flat).abs().max()


def _with_optimizers(model):
    """The model's optimizers set up as fit sets them up (a fit without batches), so that its
    own ``architecture_step`` runs with a trainer attached; in train mode, as in training."""
    trainer = L.Trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=DataLoader([0]))
    return model.train()


def _alpha_gradient(model, batch):
    """dL(batch)/dalpha of the dense supernet, computed apart from the model's own code path."""
    alphas = [a.detach().clone().requires_grad_() for a in model.alphas.values()]
    decisions = {k: torch.softmax(a, -1) for k, a in zip(model.alphas.keys(), alphas)}
    loss = F.cross_entropy(model.supernet(batch[0], decisions), batch[1])
    return loss.detach(), torch.autograd.grad(loss, alphas)


def test_first_order_architecture_step_is_adam_on_the_validation_gradient():
    model = _with_optimizers(_tiny_model(unrolled=False))
    train, val = _batch(1), _batch(2)
    before = copy.deepcopy(model)  # weights, alphas and BN as the step finds them
    expected_loss, expected = _alpha_gradient(copy.deepcopy(before), val)
    _, train_gradient = _alpha_gradient(copy.deepcopy(before), train)
    # the two batches give different gradients, so a step on the training batch would fail below
    assert not torch.allclose(torch.cat(expected), torch.cat(train_gradient), rtol=0.1)

    loss = model.architecture_step(train, val)

    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-10)
    for (label, alpha), g in zip(model.alphas.items(), expected):
        assert torch.allclose(alpha.grad, g, rtol=1e-8, atol=1e-12), label
    # the new alphas are one Adam step (the configured lr, betas, weight decay) from the old ones
    h = model.hparams
    reference = [a.detach().clone().requires_grad_() for a in before.alphas.values()]
    adam = torch.optim.Adam(reference, lr=h.arch_learning_rate, betas=tuple(h.arch_betas),
                            weight_decay=h.arch_weight_decay)
    for r, g in zip(reference, expected):
        r.grad = g.clone()
    adam.step()
    for (label, alpha), old, new in zip(model.alphas.items(), before.alphas.values(), reference):
        assert not torch.equal(alpha, old), label  # a step was taken
        assert torch.allclose(alpha, new, rtol=0, atol=1e-12), label
    # first order: the supernet weights are not moved by the architecture step
    for (name, w), w0 in zip(model.supernet.named_parameters(), before.supernet.parameters()):
        assert torch.equal(w, w0), name


def test_export_follows_the_space_rule():
    model = _tiny_model()
    with torch.no_grad():
        for k, alpha in model.alphas.items():
            alpha.zero_()
            alpha[3] = 5.0  # nor_conv_3x3
    assert model.space.format(model.export()) == \
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.mark.parametrize("key, value", [("space", "darts"), ("algorithm", "GdasSearch"),
                                        ("choices", ["1<-0"])])
def test_checkpoint_from_another_space_or_algorithm_is_refused(key, value):
    from oneshot.checkpoints import check_checkpoint_identity

    model = _tiny_model()
    expected = model.checkpoint_identity()
    check_checkpoint_identity({"oneshot": dict(expected)}, expected)  # its own identity passes
    with pytest.raises(ValueError, match=key):
        check_checkpoint_identity({"oneshot": {**expected, key: value}}, expected)
    with pytest.raises(ValueError, match="not written by oneshot"):
        check_checkpoint_identity({}, expected)
