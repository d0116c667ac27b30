"""Evaluation of models: one settings schema (:class:`EvalSettings`), parts registered by name
(:mod:`regcollide.evaluation.registry`, one file each in ``parts/``), :func:`evaluate_model` for any
``nn.Module`` and data, :func:`evaluate_run` for a run folder, and the one-call :func:`benchmark`."""
