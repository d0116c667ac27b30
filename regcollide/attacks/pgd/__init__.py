"""PGD (Madry et al., ICLR 2018) and PGD ease: the smallest ε at which PGD succeeds, per sample."""

from regcollide.attacks.pgd.attack import NORMS, PGD, PGDOutput
from regcollide.attacks.pgd.ease import PGDResult, evaluate_pgd

__all__ = ["NORMS", "PGD", "PGDOutput", "PGDResult", "evaluate_pgd"]
