"""Training: the config schema, the resumable training state and the training loop."""
