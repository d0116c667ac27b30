"""Evaluators: one attack per file (pgd, ease, autoattack, nullspace, polytope) plus sanity checks.

Kept import-free on purpose so `import regcollide.attacks` stays cheap; import the submodule you need,
e.g. ``from regcollide.attacks.pgd import PGD``.
"""
