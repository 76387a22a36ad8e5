"""pretrainlab: an end-to-end LLM pretraining system (data -> tokenizer -> shards -> train -> eval -> export)."""

__version__ = "0.1.0"
