"""The polytope search (Li, Zhang & Malik, "Approximate Feature Collisions in Neural Nets", NeurIPS 2019)."""

from regcollide.attacks.polytope.evaluate import PolytopeResult, evaluate_polytope
from regcollide.attacks.polytope.presets import PolytopeSetting, get_setting
from regcollide.attacks.polytope.search import PolytopeOutput, PolytopeSearch

__all__ = ["PolytopeOutput", "PolytopeResult", "PolytopeSearch", "PolytopeSetting", "evaluate_polytope",
           "get_setting"]
