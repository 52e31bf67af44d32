"""Rank-disorder analysis: how well supernet-inherited scores rank architectures.

``metrics`` (pure numpy/scipy), ``ground_truth`` (tables, benchmark APIs, retrain results),
``choose`` (which architectures), ``scoring`` (inherited weights under a BatchNorm protocol)
and ``report`` (JSON, Markdown, PNG, TensorBoard). The command, its study and the stand-alone
ground-truth training are in ``oneshot.commands.rank``, ``rank_study`` and ``rank_truth``.
"""
