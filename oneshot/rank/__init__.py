"""Rank-disorder analysis: how well supernet-inherited scores rank architectures.

``metrics`` (pure numpy/scipy), ``ground_truth`` (tables, benchmark APIs, retrain results),
``choose`` (which architectures), ``scoring`` (inherited weights under a BatchNorm protocol),
``train_truth`` (stand-alone ground truth, resumable and shardable), ``report`` (JSON, Markdown,
PNG, TensorBoard) and ``command`` (``oneshot rank``).
"""
