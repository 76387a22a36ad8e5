"""Delivery: Hugging Face export (state-dict adapters per model), model card, reproduction bundle."""
