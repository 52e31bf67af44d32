"""The ENAS controller: log-probabilities and entropies by hand, logit shaping order, the micro op
bias, the reduction sampler continuing the LSTM state, the macro skip penalty, REINFORCE's
gradient and baseline, and a controller that learns a rewarded architecture."""
import math

import pytest
import torch
import torch.nn.functional as F

from oneshot.controller import Controller, Reinforce


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_sequence_log_prob_and_entropy_by_hand():
    torch.manual_seed(0)
    controller = Controller("sequence", [3, 3], lstm_size=4, tanh_constant=2.5, temperature=5.0)
    sample = controller(_generator())
    x, state, log_prob, entropy = controller.g_emb, None, 0.0, 0.0
    for token in sample.tokens:
        h, state = controller.step(x, state)
        logits = 2.5 * torch.tanh(controller.w_soft(h)[:, :3] / 5.0)  # temperature first, then tanh
        p = F.softmax(logits, -1)[0]
        log_prob += math.log(p[token])
        entropy += -(p * p.log()).sum().item()
        x = controller.w_emb(torch.tensor([token]))
    assert sample.log_prob.item() == pytest.approx(log_prob, rel=1e-5)
    assert sample.entropy.item() == pytest.approx(entropy, rel=1e-5)
    scored = controller(tokens=sample.tokens)  # a fixed sequence gets the same log-probability
    assert scored.tokens == sample.tokens and scored.log_prob.item() == pytest.approx(log_prob, rel=1e-5)


def test_shaping_is_temperature_then_tanh():
    controller = Controller("sequence", [2], lstm_size=2, tanh_constant=2.0, temperature=4.0)
    logits = torch.tensor([[8.0, -4.0]])
    assert torch.allclose(controller.shape(logits), 2.0 * torch.tanh(logits / 4.0))
    assert not torch.allclose(controller.shape(logits), 2.0 * torch.tanh(logits) / 4.0)


def test_micro_op_bias_and_the_reduction_cell_continues_the_state(monkeypatch):
    torch.manual_seed(0)
    controller = Controller("micro", [5, 5], lstm_size=8, tanh_constant=1.1, op_tanh_reduce=2.5)
    assert controller.b_soft.tolist() == [[10.0, 10.0, 0.0, 0.0, 0.0]]
    assert controller.b_soft_no_learn.tolist() == [[0.25, 0.25, -0.25, -0.25, -0.25]]
    sample = controller(_generator())
    assert len(sample.tokens) == 40
    for node in range(5):  # indices within the node's predecessors, ops within 0..4
        for cell in range(2):
            i1, o1, i2, o2 = sample.tokens[20 * cell + 4 * node: 20 * cell + 4 * node + 4]
            assert 0 <= i1 < node + 2 and 0 <= i2 < node + 2 and 0 <= o1 < 5 and 0 <= o2 < 5
    # the op bias pushes sep convs: with shaped logits <= 0.44 + 0.25 the first two ops dominate
    counts = torch.zeros(5)
    for seed in range(30):
        tokens = controller(_generator(seed)).tokens
        for k in range(1, 40, 2):
            counts[tokens[k]] += 1
    assert counts[:2].sum() > counts[2:].sum()
    # the reduction cell starts from the state the normal cell left: the first LSTM call of the
    # reduction cell receives a state, not None
    calls = []
    original = controller.step
    monkeypatch.setattr(controller, "step", lambda x, state: (calls.append(state), original(x, state))[1])
    controller(_generator())
    per_cell = 2 + 5 * 5  # two input steps, then 5 steps per node
    assert calls[0] is None and calls[per_cell] is not None


def test_macro_skip_penalty_by_hand():
    torch.manual_seed(0)
    controller = Controller("macro", [3, 6], lstm_size=4, tanh_constant=1.5, skip_target=0.4)
    sample = controller(_generator())
    assert len(sample.tokens) == 3 + 0 + 1 + 2
    # recompute the penalty from the same forward: sigmoid of the 2-way logits against [0.6, 0.4]
    x, state, anchors, keys, penalties = controller.g_emb, None, [], [], []
    position = 0
    for layer in range(3):
        h, state = controller.step(x, state)
        op = sample.tokens[position]
        position += 1
        h, state = controller.step(controller.w_emb(torch.tensor([op])), state)
        if layer:
            q = controller.v_attn(torch.tanh(torch.cat(keys) + controller.w_attn_2(h)))
            logits = 1.5 * torch.tanh(torch.cat([-q, q], 1))
            probs = torch.sigmoid(logits)
            penalties.append((probs * torch.log(probs / torch.tensor([0.6, 0.4]))).sum())
            skips = torch.tensor(sample.tokens[position:position + layer], dtype=torch.float)[None]
            position += layer
            x = skips @ torch.cat(anchors) / (1 + skips.sum())
        else:
            x = controller.g_emb
        anchors.append(h)
        keys.append(controller.w_attn_1(h))
    assert sample.skip_penalty.item() == pytest.approx(torch.stack(penalties).mean().item(), rel=1e-5)


def test_reinforce_gradient_is_advantage_times_grad_log_p_and_the_baseline_moves_first():
    torch.manual_seed(0)
    controller = Controller("sequence", [4, 4], lstm_size=4)
    optimizer = torch.optim.SGD(controller.parameters(), lr=1.0)
    trainer = Reinforce(controller, optimizer, entropy_weight=0.1, baseline_decay=0.9, num_aggregate=2)
    batch = trainer.sample(_generator())
    rewards = [0.7 + 0.1 * float(batch.entropy[0]), 0.2 + 0.1 * float(batch.entropy[1])]
    baselines = [0.1 * rewards[0]]
    baselines.append(baselines[0] - 0.1 * (baselines[0] - rewards[1]))
    expected = torch.zeros_like(controller.w_soft.weight)
    for row, (reward, baseline) in enumerate(zip(rewards, baselines)):
        single = controller(tokens=batch.tokens[row].tolist())
        grad = torch.autograd.grad(single.log_prob, controller.w_soft.weight)[0]
        expected += -(reward - baseline) * grad / 2  # the average over num_aggregate
    before = controller.w_soft.weight.detach().clone()
    trainer.update(batch, [0.7, 0.2])
    assert trainer.baseline == pytest.approx(baselines[1])
    torch.testing.assert_close(before - controller.w_soft.weight.detach(), expected)  # SGD lr 1: w - grad


@pytest.mark.parametrize("kind, sizes", [("sequence", [3, 5, 2]), ("micro", [3, 5]), ("macro", [4, 6])])
def test_a_batch_scores_each_row_as_a_single_sample(kind, sizes):
    torch.manual_seed(0)
    controller = Controller(kind, sizes, lstm_size=8, tanh_constant=1.5, skip_target=0.4)
    batch = controller.batch(5, _generator())
    rescored = controller.batch(5, tokens=batch.tokens)
    for row in range(5):
        single = controller(tokens=batch.tokens[row].tolist())
        assert single.tokens == batch.tokens[row].tolist()
        assert rescored.log_prob[row].item() == pytest.approx(single.log_prob.item(), rel=1e-5)
        assert batch.log_prob[row].item() == pytest.approx(single.log_prob.item(), rel=1e-5)
        assert batch.entropy[row].item() == pytest.approx(single.entropy.item(), rel=1e-5)
        if kind == "macro":
            assert batch.skip_penalty[row].item() == pytest.approx(single.skip_penalty.item(), rel=1e-5)


def test_a_controller_learns_the_only_rewarded_architecture():
    """Reward 1 for one of 27 architectures, 0 for the rest: within 200 updates the controller
    samples it most of the time (xautodl's shaping: temperature 5, tanh 2.5)."""
    torch.manual_seed(0)
    controller = Controller("sequence", [3] * 3, lstm_size=32, tanh_constant=2.5, temperature=5.0)
    trainer = Reinforce(controller, torch.optim.Adam(controller.parameters(), lr=0.01), baseline_decay=0.9)
    target, generator = [2, 0, 1], _generator()
    before = sum(controller(generator).tokens == target for _ in range(50))
    for _ in range(200):
        batch = trainer.sample(generator)
        trainer.update(batch, [float(row == target) for row in batch.tokens.tolist()])
    after = sum(controller(generator).tokens == target for _ in range(50))
    assert before <= 10 and after >= 40, (before, after)
