"""Evaluation: held-out perplexity per source, generation, whole-run evaluation."""
