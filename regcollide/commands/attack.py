"""``regcollide attack nullspace|polytope|pgd``: one evaluator per subcommand."""

from __future__ import annotations

import click

from regcollide.cli import LazyGroup

ATTACKS = {
    "nullspace": ("regcollide.commands.attack_nullspace:nullspace",
                  "Null-space search (Ozbulak et al.): exact colliding inputs."),
    "polytope": ("regcollide.commands.attack_polytope:polytope",
                 "Polytope search (Li, Zhang & Malik 2019): polytopes of colliding inputs."),
    "pgd": ("regcollide.commands.attack_pgd:pgd", "PGD (Madry et al. 2018), PGD ease and optional AutoAttack."),
}


@click.group("attack", cls=LazyGroup, lazy=ATTACKS)
def attack() -> None:
    """Run a collision or adversarial evaluator; each writes OUT/results.json and a picture."""
