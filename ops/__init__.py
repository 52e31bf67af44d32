"""Shared primitives: candidate operations and mixed operations (imports torch only)."""
from ops.candidates import build_candidate, candidate_names, register_candidate
from ops.mixed import (Decision, MixedOp, PartialChannelMixedOp, SampledPath, channel_shuffle,
                       channel_unshuffle, weighted_sum)

__all__ = ["build_candidate", "candidate_names", "register_candidate", "Decision", "MixedOp",
           "PartialChannelMixedOp", "SampledPath", "channel_shuffle", "channel_unshuffle", "weighted_sum"]
