"""Weights and files: reading and converting checkpoints, loading a model, atomic writes."""
