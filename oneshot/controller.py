"""The ENAS controller: an LSTM that samples an architecture token by token (Pham et al., ICML 2018).

Three samplers share one LSTM, its learned start embedding ``g_emb`` and the token embeddings:

* ``sequence``: one categorical choice per label (NAS-Bench-201's ENAS, xautodl
  ``search_model_enas_utils.Controller``; any space whose choices are plain option indices);
* ``micro``: melodyguan/enas ``micro_controller.py``. Per cell (normal, then reduction, which
  continues the LSTM state), two steps make the two input anchors (zero vectors whose attention
  keys are the LSTM outputs); per node: two input indices by attention over the anchors, then two
  ops, then one step whose output becomes the node's anchor. Op logits are ``h W + b`` with the
  learnable ``b`` initialised [10, 10, 0, 0, 0], shaped with ``tanh_constant / op_tanh_reduce``,
  and in the normal cell shifted by the constant [0.25, 0.25, -0.25, -0.25, -0.25];
* ``macro``: melodyguan/enas ``general_controller.py`` (``search_whole_channels``): per layer
  the op, then one step whose output decides, for every earlier layer j, a skip by the 2-way
  logits [-q_j, q_j] with q_j = v·tanh(W1 h_j + W2 h); the next input is the mean of the
  chosen anchors (sum / (1 + count)). The skip penalty is KL(sigmoid(logits) || [1 - rho, rho])
  summed per layer and averaged over layers, as the reference computes it.

Logits are shaped in the reference's order: divided by ``temperature``, then
``tanh_constant * tanh``. The entropy is the sum of each decision's entropy; the macro sampler,
as its reference, sums p·(-log p) of the sampled tokens instead. :meth:`Controller.forward`
samples with a ``torch.Generator`` (so every DDP rank and a resumed run draw the same tokens) or
scores given tokens (the log-probability of a fixed sequence).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("sequence", "micro", "macro")


@dataclass
class ControllerSample:
    """Tokens in the space's order, their summed log-probability, the summed entropy (no
    gradient) and, for the macro sampler, the skip penalty."""

    tokens: list[int]
    log_prob: torch.Tensor
    entropy: torch.Tensor
    skip_penalty: torch.Tensor | None = None


class Controller(nn.Module):
    """ENAS's LSTM controller.

    Args:
        kind: ``sequence``, ``micro`` or ``macro``.
        sizes: ``sequence``: options per label; ``micro``: (nodes per cell, ops) e.g. (5, 5);
            ``macro``: (layers, ops) e.g. (12, 6).
        lstm_size: hidden size (CIFAR scripts 64; xautodl's NB201 controller 32).
        lstm_layers: stacked LSTM layers (ENAS 1; xautodl 2).
        lstm_bias: biases in the LSTM and the op softmax (xautodl's ``nn.LSTM``/``nn.Linear``);
            the TF reference has none.
        tanh_constant, temperature: logit shaping (None: off).
        op_tanh_reduce: the micro op logits use ``tanh_constant / op_tanh_reduce`` (2.5).
        skip_target: the macro skip probability the penalty pulls towards (0.4).
    """

    def __init__(self, kind: str, sizes: Sequence[int], lstm_size: int = 64, lstm_layers: int = 1,
                 lstm_bias: bool = False, tanh_constant: float | None = None, temperature: float | None = None,
                 op_tanh_reduce: float = 1.0, skip_target: float = 0.4):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"controller kind {kind!r}: accepted {', '.join(KINDS)}")
        self.kind, self.sizes = kind, tuple(int(s) for s in sizes)
        num_ops = max(self.sizes) if kind == "sequence" else self.sizes[1]
        self.tanh_constant, self.temperature, self.op_tanh_reduce = tanh_constant, temperature, op_tanh_reduce
        self.skip_target = skip_target
        self.lstm = nn.ModuleList(nn.LSTMCell(lstm_size, lstm_size, bias=lstm_bias) for _ in range(lstm_layers))
        self.g_emb = nn.Parameter(torch.empty(1, lstm_size))
        self.w_emb = nn.Embedding(num_ops, lstm_size)
        self.w_soft = nn.Linear(lstm_size, num_ops, bias=lstm_bias)
        if kind == "micro":  # the learnable op bias, [10, 10, 0, ...]: the two separable convs first
            self.b_soft = nn.Parameter(torch.tensor([[10.0, 10.0] + [0.0] * (num_ops - 2)]))
            self.register_buffer("b_soft_no_learn", torch.tensor([[0.25, 0.25] + [-0.25] * (num_ops - 2)]))
        if kind in ("micro", "macro"):
            self.w_attn_1 = nn.Linear(lstm_size, lstm_size, bias=False)
            self.w_attn_2 = nn.Linear(lstm_size, lstm_size, bias=False)
            self.v_attn = nn.Linear(lstm_size, 1, bias=False)
        for name, p in self.named_parameters():
            if name != "b_soft" and not name.endswith("bias"):
                nn.init.uniform_(p, -0.1, 0.1)  # the reference's initializer for every variable

    # --- pieces -----------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, state: list[tuple[torch.Tensor, torch.Tensor]] | None):
        """One step of the stacked LSTM; returns the top output and the new state."""
        new_state = []
        for i, cell in enumerate(self.lstm):
            h, c = cell(x, None if state is None else state[i])
            new_state.append((h, c))
            x = h
        return x, new_state

    def shape(self, logits: torch.Tensor, tanh_constant: float | None = None) -> torch.Tensor:
        """Temperature, then ``tanh_constant * tanh`` (the reference's order)."""
        if self.temperature is not None:
            logits = logits / self.temperature
        constant = self.tanh_constant if tanh_constant is None else tanh_constant
        if constant is not None:
            logits = constant * torch.tanh(logits)
        return logits

    @staticmethod
    def decide(logits: torch.Tensor, forced: torch.Tensor | None, generator: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or take ``forced``) one token per row of ``logits`` [rows, K]; the tokens, their
        log-probabilities and the rows' log-softmax."""
        log_p = F.log_softmax(logits, dim=-1)
        if forced is None:
            token = torch.multinomial(log_p.detach().exp(), 1, generator=generator).squeeze(-1)
        else:
            token = forced.to(logits.device).reshape(-1)
        return token, log_p.gather(-1, token[:, None]).squeeze(-1), log_p

    @staticmethod
    def entropy_of(log_p: torch.Tensor) -> torch.Tensor:
        """Each row's entropy [rows], without gradient."""
        return -(log_p.exp() * log_p).sum(-1).detach()

    # --- samplers ---------------------------------------------------------------------------------
    def forward(self, generator: torch.Generator | None = None, tokens: Sequence[int] | None = None
                ) -> ControllerSample:
        """One architecture's tokens, sampled or given (``tokens``: scored as a fixed sequence)."""
        forced = None if tokens is None else torch.as_tensor([list(tokens)])
        batch = self.batch(1, generator, forced)
        return ControllerSample(batch.tokens[0].tolist(), batch.log_prob[0], batch.entropy[0],
                                None if batch.skip_penalty is None else batch.skip_penalty[0])

    def batch(self, size: int, generator: torch.Generator | None = None,
              tokens: torch.Tensor | None = None) -> "ControllerBatch":
        """``size`` architectures at once (rows), sampled or given as ``tokens`` [size, T]: the same
        distribution as ``size`` calls of :meth:`forward`, in one pass."""
        forced = None if tokens is None else torch.as_tensor(tokens).reshape(size, -1)
        sampler = {"sequence": self._sequence, "micro": self._micro, "macro": self._macro}[self.kind]
        return sampler(size, generator, forced)

    def _start(self, size: int) -> torch.Tensor:
        return self.g_emb.expand(size, -1)

    def _sequence(self, size, generator, forced) -> "ControllerBatch":
        x, state = self._start(size), None
        tokens, log_prob, entropy = [], 0.0, 0.0
        for i, options in enumerate(self.sizes):
            h, state = self.step(x, state)
            logits = self.shape(self.w_soft(h)[:, :options])
            token, lp, log_p = self.decide(logits, None if forced is None else forced[:, i], generator)
            tokens.append(token)
            log_prob, entropy = log_prob + lp, entropy + self.entropy_of(log_p)
            x = self.w_emb(token)
        return ControllerBatch(torch.stack(tokens, 1), log_prob, entropy)

    def _micro(self, size, generator, forced) -> "ControllerBatch":
        nodes, _ = self.sizes
        op_tanh = None if self.tanh_constant is None else self.tanh_constant / self.op_tanh_reduce
        rows = torch.arange(size)
        state, columns, log_prob, entropy = None, [], 0.0, 0.0
        for cell in range(2):  # normal, then reduction, continuing the LSTM state
            anchors, keys = [], []
            for _ in range(2):  # the two cell inputs: zero anchors, keys from the LSTM
                h, state = self.step(self._start(size), state)
                anchors.append(torch.zeros_like(h))
                keys.append(self.w_attn_1(h))
            x = self._start(size)
            for node in range(2, nodes + 2):
                chosen = {}
                for i in range(2):  # the two input indices, by attention over the anchors
                    h, state = self.step(x, state)
                    query = torch.tanh(torch.stack(keys, 1) + self.w_attn_2(h)[:, None])  # [B, node, H]
                    logits = self.shape(self.v_attn(query).squeeze(-1))
                    take = None if forced is None else forced[:, len(columns) + 2 * i]
                    token, lp, log_p = self.decide(logits, take, generator)
                    chosen[2 * i] = token
                    log_prob, entropy = log_prob + lp, entropy + self.entropy_of(log_p)
                    x = torch.stack(anchors)[token, rows]
                for i in range(2):  # the two ops
                    h, state = self.step(x, state)
                    logits = self.shape(self.w_soft(h) + self.b_soft, op_tanh)
                    if cell == 0:
                        logits = logits + self.b_soft_no_learn
                    take = None if forced is None else forced[:, len(columns) + 2 * i + 1]
                    token, lp, log_p = self.decide(logits, take, generator)
                    chosen[2 * i + 1] = token
                    log_prob, entropy = log_prob + lp, entropy + self.entropy_of(log_p)
                    x = self.w_emb(token)
                h, state = self.step(x, state)
                anchors.append(h)
                keys.append(self.w_attn_1(h))
                x = self._start(size)
                columns += [chosen[0], chosen[1], chosen[2], chosen[3]]  # index_1, op_1, index_2, op_2
        return ControllerBatch(torch.stack(columns, 1), log_prob, entropy)

    def _macro(self, size, generator, forced) -> "ControllerBatch":
        layers, _ = self.sizes
        target = torch.tensor([1.0 - self.skip_target, self.skip_target])
        x, state, anchors, keys = self._start(size), None, [], []
        columns, log_prob, entropy, penalties, position = [], 0.0, 0.0, [], 0
        for layer in range(layers):
            h, state = self.step(x, state)
            take = None if forced is None else forced[:, position]
            position += 1
            token, lp, _ = self.decide(self.shape(self.w_soft(h)), take, generator)
            columns.append(token[:, None])
            log_prob, entropy = log_prob + lp, entropy + (-lp * lp.exp()).detach()
            h, state = self.step(self.w_emb(token), state)
            if layer > 0:
                q = self.v_attn(torch.tanh(torch.stack(keys, 1) + self.w_attn_2(h)[:, None]))  # [B, layer, 1]
                logits = self.shape(torch.cat([-q, q], -1))  # [B, layer, 2]
                take = None if forced is None else forced[:, position:position + layer]
                position += layer
                skips, lp, _ = self.decide(logits.reshape(-1, 2), take, generator)
                skips, lp = skips.view(size, layer), lp.view(size, layer)
                columns.append(skips)
                log_prob, entropy = log_prob + lp.sum(1), entropy + (-lp * lp.exp()).sum(1).detach()
                probs = torch.sigmoid(logits)
                penalties.append((probs * torch.log(probs / target.to(probs.device))).sum((1, 2)))
                weights = skips.to(h.dtype)[:, :, None]
                x = (weights * torch.stack(anchors, 1)).sum(1) / (1.0 + weights.sum(1))
            else:
                x = self._start(size)
            anchors.append(h)
            keys.append(self.w_attn_1(h))
        penalty = torch.stack(penalties, 1).mean(1) if penalties else torch.zeros(size)
        return ControllerBatch(torch.cat(columns, 1), log_prob, entropy, penalty)


@dataclass
class ControllerBatch:
    """Rows of architectures: tokens [B, T], log-probabilities [B], entropies [B] (no gradient),
    macro skip penalties [B]."""

    tokens: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor
    skip_penalty: torch.Tensor | None = None


class Reinforce:
    """REINFORCE for the controller with an exponential-moving-average baseline.

    melodyguan/enas ``build_trainer``: reward R = accuracy + ``entropy_weight`` * entropy; the
    baseline moves first, b <- b - (1 - ``baseline_decay``)(b - R), from 0, and the loss uses
    the moved baseline: -(R - b) * log p (+ ``skip_weight`` * the macro skip penalty). The
    gradients of the ``num_aggregate`` samples of one update are averaged (SyncReplicas) before one
    optimizer step, with the norm clipped to ``grad_clip`` where set (xautodl clips at 5; the TF
    scripts do not). The samples of an update are drawn together (the controller does not change
    between them) and scored in one batched pass; the gradient is taken with ``autograd.grad`` so
    that no DDP hook sees it.
    """

    def __init__(self, controller: Controller, optimizer: torch.optim.Optimizer, entropy_weight: float = 0.0,
                 baseline_decay: float = 0.99, skip_weight: float = 0.0, num_aggregate: int = 1,
                 grad_clip: float | None = None):
        if num_aggregate < 1 or not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"num_aggregate={num_aggregate}, baseline_decay={baseline_decay}: need "
                             "num_aggregate >= 1 and 0 <= baseline_decay < 1")
        self.controller, self.optimizer = controller, optimizer
        self.entropy_weight, self.baseline_decay = entropy_weight, baseline_decay
        self.skip_weight, self.num_aggregate, self.grad_clip = skip_weight, num_aggregate, grad_clip
        self.baseline = 0.0

    def sample(self, generator: torch.Generator | None = None) -> ControllerBatch:
        """The ``num_aggregate`` architectures of one update (no gradient)."""
        with torch.no_grad():
            return self.controller.batch(self.num_aggregate, generator)

    def update(self, batch: ControllerBatch, accuracies: Sequence[float]) -> dict[str, float]:
        """One controller step from the rewards of ``batch``'s rows, baselines moved in row order."""
        advantages, rewards = [], []
        for accuracy, entropy in zip(accuracies, batch.entropy.tolist()):
            reward = float(accuracy) + self.entropy_weight * entropy
            self.baseline -= (1.0 - self.baseline_decay) * (self.baseline - reward)
            advantages.append(reward - self.baseline)
            rewards.append(reward)
        scored = self.controller.batch(len(rewards), tokens=batch.tokens)
        advantage = torch.tensor(advantages, dtype=scored.log_prob.dtype)
        loss = -(advantage * scored.log_prob)
        if self.skip_weight and scored.skip_penalty is not None:
            loss = loss + self.skip_weight * scored.skip_penalty
        loss = loss.mean()  # the average of the samples' gradients
        parameters = [p for p in self.controller.parameters() if p.requires_grad]
        for p, g in zip(parameters, torch.autograd.grad(loss, parameters, allow_unused=True)):
            p.grad = g
        if self.grad_clip:
            nn.utils.clip_grad_norm_(parameters, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach()), "reward": sum(rewards) / len(rewards), "baseline": self.baseline,
                "entropy": float(batch.entropy.mean())}

    def state_dict(self) -> dict[str, float]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.baseline = float(state["baseline"])


# --- which sampler serves a space, and how its tokens make an Arch -------------------------------
TOKEN_SPACES = {"enas-micro": "micro", "enas-macro": "macro"}  # canonical strings are the tokens


class ArchCodec:
    """Tokens <-> Arch for a space: the ENAS spaces' canonical strings are their token
    sequences; any other space is served token per choice label, when every choice is an option
    index (NB201 edges, SPOS blocks)."""

    def __init__(self, space, choices: dict[str, tuple]):
        self.space = space
        self.kind = TOKEN_SPACES.get(space.name, "sequence")
        if self.kind == "sequence":
            sample = space.sample()
            if list(sample) != list(choices) or not all(isinstance(v, int) for v in sample.values()):
                raise ValueError(f"the ENAS controller samples one option per choice; space {space.name!r} "
                                 "has structured choices: use enas-micro, enas-macro, nb201 or spos")
            self.labels, self.sizes = list(choices), [len(options) for options in choices.values()]
        else:
            module = importlib.import_module(f"supernets.{space.name.replace('-', '_')}")
            depth = module.NUM_NODES if self.kind == "micro" else len(choices)  # nodes per cell; layers
            self.sizes = [depth, len(module.OPS)]

    def arch(self, tokens: Sequence[int]):
        if self.kind == "sequence":
            from supernets import Arch
            return Arch(self.space.name, dict(zip(self.labels, tokens)))
        return self.space.parse(" ".join(map(str, tokens)))

    def tokens(self, arch) -> list[int]:
        if self.kind == "sequence":
            return [int(arch[label]) for label in self.labels]
        return [int(t) for t in self.space.format(arch).split()]
