"""Tokenizer training (byte-level BPE), loading, and corpus -> token shards."""

from pretrainlab.tokenizer.vocab import TextTokenizer, load_tokenizer

__all__ = ["TextTokenizer", "load_tokenizer"]
