"""The Null-space search (Ozbulak et al., "Exact Feature Collisions in Neural Networks"): x + P, P in ker W₁."""

from regcollide.attacks.nullspace.adversarial import CollidingAdversarial, colliding_adversarial
from regcollide.attacks.nullspace.basis import NullspaceError
from regcollide.attacks.nullspace.search import NullspaceOutput, NullspaceResult, NullspaceSearch, evaluate_nullspace

__all__ = ["CollidingAdversarial", "NullspaceError", "NullspaceOutput", "NullspaceResult", "NullspaceSearch",
           "colliding_adversarial", "evaluate_nullspace"]
