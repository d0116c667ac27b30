"""Evaluation of trained models: one settings schema, parts registered by name, one JSON entry per model."""
