"""Tokenizer training (byte-level BPE), loading, and corpus -> token shards.

Import-free: ``pretrainlab.config`` imports this package's ``config`` module, and the
stage modules import ``pretrainlab.config``; import them by their full name.
"""
