"""Evaluators, one package per family: ``pgd`` (PGD and PGD ease), ``nullspace``, ``polytope``, plus
``autoattack`` (the official standard AutoAttack) and ``checks`` (sanity flags).

Kept import-free so that importing one family does not pull in the others.
"""
