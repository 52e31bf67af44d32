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
    def decide(logits: torch.Tensor, forced: int | torch.Tensor | None, generator: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or take ``forced``) one token per row of ``logits``; its log-prob and the
        rows' log-softmax."""
        log_p = F.log_softmax(logits, dim=-1)
        if forced is None:
            token = torch.multinomial(log_p.detach().exp(), 1, generator=generator).squeeze(-1)
        else:
            token = torch.as_tensor(forced, device=logits.device).reshape(-1)
        return token, log_p.gather(-1, token[:, None]).squeeze(-1), log_p

    @staticmethod
    def entropy_of(log_p: torch.Tensor) -> torch.Tensor:
        return -(log_p.exp() * log_p).sum().detach()

    # --- samplers ---------------------------------------------------------------------------------
    def forward(self, generator: torch.Generator | None = None, tokens: Sequence[int] | None = None
                ) -> ControllerSample:
        """Sample an architecture's tokens, or score ``tokens`` (same order as sampled ones)."""
        forced = None if tokens is None else list(tokens)
        if self.kind == "sequence":
            return self._sequence(generator, forced)
        if self.kind == "micro":
            return self._micro(generator, forced)
        return self._macro(generator, forced)

    def _sequence(self, generator, forced) -> ControllerSample:
        x, state = self.g_emb, None
        tokens, log_prob, entropy = [], 0.0, 0.0
        for i, size in enumerate(self.sizes):
            h, state = self.step(x, state)
            logits = self.shape(self.w_soft(h)[:, :size])
            token, lp, log_p = self.decide(logits, None if forced is None else forced[i], generator)
            tokens.append(int(token))
            log_prob, entropy = log_prob + lp.sum(), entropy + self.entropy_of(log_p)
            x = self.w_emb(token)
        return ControllerSample(tokens, log_prob, entropy)

    def _micro(self, generator, forced) -> ControllerSample:
        nodes, _ = self.sizes
        op_tanh = None if self.tanh_constant is None else self.tanh_constant / self.op_tanh_reduce
        state, tokens, log_prob, entropy = None, [], 0.0, 0.0
        position = 0
        for cell in range(2):  # normal, then reduction, continuing the LSTM state
            anchors, keys = [], []
            x = self.g_emb
            for _ in range(2):  # the two cell inputs: zero anchors, keys from the LSTM
                h, state = self.step(x, state)
                anchors.append(torch.zeros_like(h))
                keys.append(self.w_attn_1(h))
            for node in range(2, nodes + 2):
                chosen = {}
                for i in range(2):  # the two input indices, by attention over the anchors
                    h, state = self.step(x, state)
                    query = torch.tanh(torch.cat(keys, 0) + self.w_attn_2(h))
                    logits = self.shape(self.v_attn(query).view(1, node))
                    take = None if forced is None else forced[position + 2 * i]
                    token, lp, log_p = self.decide(logits, take, generator)
                    chosen[2 * i] = int(token)
                    log_prob, entropy = log_prob + lp.sum(), entropy + self.entropy_of(log_p)
                    x = anchors[int(token)]
                for i in range(2):  # the two ops
                    h, state = self.step(x, state)
                    logits = self.shape(self.w_soft(h) + self.b_soft, op_tanh)
                    if cell == 0:
                        logits = logits + self.b_soft_no_learn
                    take = None if forced is None else forced[position + 2 * i + 1]
                    token, lp, log_p = self.decide(logits, take, generator)
                    chosen[2 * i + 1] = int(token)
                    log_prob, entropy = log_prob + lp.sum(), entropy + self.entropy_of(log_p)
                    x = self.w_emb(token)
                h, state = self.step(x, state)
                anchors.append(h)
                keys.append(self.w_attn_1(h))
                x = self.g_emb
                tokens += [chosen[0], chosen[1], chosen[2], chosen[3]]  # index_1, op_1, index_2, op_2
                position += 4
        return ControllerSample(tokens, log_prob, entropy)

    def _macro(self, generator, forced) -> ControllerSample:
        layers, _ = self.sizes
        target = torch.tensor([1.0 - self.skip_target, self.skip_target])
        x, state, anchors, keys = self.g_emb, None, [], []
        tokens, log_prob, entropy, penalties = [], 0.0, 0.0, []
        position = 0
        for layer in range(layers):
            h, state = self.step(x, state)
            logits = self.shape(self.w_soft(h))
            token, lp, _ = self.decide(logits, None if forced is None else forced[position], generator)
            tokens.append(int(token))
            position += 1
            log_prob, entropy = log_prob + lp.sum(), entropy + (-lp * lp.exp()).sum().detach()
            h, state = self.step(self.w_emb(token), state)
            if layer > 0:
                q = self.v_attn(torch.tanh(torch.cat(keys, 0) + self.w_attn_2(h)))  # [layer, 1]
                logits = self.shape(torch.cat([-q, q], 1))
                take = None if forced is None else forced[position:position + layer]
                skips, lp, _ = self.decide(logits, take, generator)
                tokens += [int(s) for s in skips]
                position += layer
                log_prob, entropy = log_prob + lp.sum(), entropy + (-lp * lp.exp()).sum().detach()
                probs = torch.sigmoid(logits)
                penalties.append((probs * torch.log(probs / target.to(probs.device))).sum())
                weights = skips.to(h.dtype)[None, :]
                x = weights @ torch.cat(anchors, 0) / (1.0 + weights.sum())
            else:
                x = self.g_emb
            anchors.append(h)
            keys.append(self.w_attn_1(h))
        penalty = torch.stack(penalties).mean() if penalties else torch.zeros(())
        return ControllerSample(tokens, log_prob, entropy, penalty)


class Reinforce:
    """REINFORCE for the controller with an exponential-moving-average baseline.

    melodyguan/enas ``build_trainer``: reward R = accuracy + ``entropy_weight`` * entropy; the
    baseline moves first, b <- b - (1 - ``baseline_decay``)(b - R), from 0, and the loss uses
    the moved baseline: -(R - b) * log p (+ ``skip_weight`` * the macro skip penalty). The
    gradients of ``num_aggregate`` samples are averaged (SyncReplicas) before one optimizer step,
    with the norm clipped to ``grad_clip`` where set (xautodl clips at 5; the TF scripts do not).
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
        self.pending = 0  # samples accumulated since the last update

    def loss(self, sample: ControllerSample, accuracy: float) -> tuple[torch.Tensor, float]:
        """The sample's loss and reward; moves the baseline."""
        reward = float(accuracy) + self.entropy_weight * float(sample.entropy)
        self.baseline -= (1.0 - self.baseline_decay) * (self.baseline - reward)
        loss = -sample.log_prob * (reward - self.baseline)
        if self.skip_weight and sample.skip_penalty is not None:
            loss = loss + self.skip_weight * sample.skip_penalty
        return loss, reward

    def accumulate(self, sample: ControllerSample, accuracy: float,
                   backward: "callable | None" = None) -> dict[str, float]:
        """Add one sample's gradient (averaged over ``num_aggregate``); update when enough came in.
        ``backward`` replaces ``loss.backward()`` (Lightning's ``manual_backward``)."""
        loss, reward = self.loss(sample, accuracy)
        (backward or torch.Tensor.backward)(loss / self.num_aggregate)
        self.pending += 1
        stepped = self.pending == self.num_aggregate
        if stepped:
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.controller.parameters(), self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.pending = 0
        return {"loss": float(loss.detach()), "reward": reward, "baseline": self.baseline,
                "entropy": float(sample.entropy), "stepped": float(stepped)}

    def state_dict(self) -> dict[str, float]:
        return {"baseline": self.baseline, "pending": self.pending}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.baseline, self.pending = float(state["baseline"]), int(state["pending"])


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
