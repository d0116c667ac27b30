"""Named settings of the polytope search, each parameter with where it comes from.

Li, Zhang & Malik, "Approximate Feature Collisions in Neural Nets", NeurIPS 2019. A distance ratio only
compares with theirs when it is measured in their setting, so the ``li2019`` setting fixes every search
parameter that their work pins down, and says for every other one that it is open and what we use instead.

Two sources were readable offline: the paper's abstract (polytopes of approximately colliding inputs at a
ReLU layer) and the authors' public code release for their ImageNet experiments (TensorFlow, VGG-16, the
pre-activation of its first fully connected layer). The code has no MNIST script, so every MNIST-specific
choice (their network, layer, budget and learning rate on MNIST) is listed under ``open``.

Example::

    setting = get_setting("li2019")
    result = evaluate_polytope(model, images, labels, targets=4, **setting.kwargs())
    result.to_dict()["distance_ratio_all"]   # the spread at the fixed budget, their protocol
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Choice:
    """One fixed keyword of :func:`~regcollide.attacks.polytope.evaluate.evaluate_polytope` and its source."""

    value: Any
    source: str


@dataclass(frozen=True)
class PolytopeSetting:
    """A named setting: the keywords it fixes (with sources) and what it leaves open (with our choice)."""

    name: str
    summary: str
    fixed: dict[str, Choice]
    open: dict[str, str]

    def kwargs(self) -> dict[str, Any]:
        """The fixed keywords, ready for ``evaluate_polytope(..., **setting.kwargs())``."""
        return {key: choice.value for key, choice in self.fixed.items()}


_CODE = "the authors' code release (ImageNet, VGG-16)"

LI2019 = PolytopeSetting(
    name="li2019",
    summary="Li, Zhang & Malik's vertex loss, vertex count, unit choice, start and budget",
    fixed={
        "loss": Choice("li2019", f"{_CODE}: each vertex minimizes its pushed unit's pre-activation plus the "
                                 "absolute pre-activations of the other inactive units"),
        "hold": Choice(1.0, f"{_CODE}: the pushed unit and the other inactive units have equal weights"),
        "vertices": Choice(5, f"{_CODE}: five vertices per target, spread averaged over their 10 pairs"),
        "unit_order": Choice("first", f"{_CODE}: vertex k pushes the k-th inactive unit in index order"),
        "init": Choice("other", f"{_CODE}: the cross-class runs start from an image of another class"),
        "steps": Choice(30000, f"{_CODE}: 30,000 iterations from another class (20,000 from the target), "
                               "a fixed budget with no convergence test"),
        "samples": Choice(2000, f"{_CODE}: 2,000 random convex combinations of the vertices per target"),
    },
    open={
        "network": "their MNIST network is not in the code release; we use the mlp 784-256-256-10 trained on "
                   "mnist5k by configs/erm.yaml",
        "layer": "their MNIST layer is not in the code release (ImageNet: VGG-16's first fully connected "
                 "layer); we use the first ReLU layer, and --layer picks another",
        "budget on MNIST": "not in the code release; we use their ImageNet budget (steps above)",
        "optimizer": "theirs: gradient descent on an exponential moving average of the gradient (0.99) with "
                     "a learning rate raised stepwise from 0.001 to 0.1, on softmax weights over 625 shifted "
                     "natural-image patches plus a total-variation penalty (ImageNet); we use Adam at a "
                     "constant lr 0.03 on the pixels, projected onto [0, 1]",
        "loss weights": "theirs: 100 x (1/2)||z_A - t_A||^2 against 10 x the push, in raw feature units of "
                        "0-255 pixels; no scale-free equivalent exists, we keep beta = 0.001 in units of "
                        "||relu(t)||",
        "sampler": "theirs: stick-breaking with uniform fractions; ours: Dirichlet(1), uniform on the "
                   "simplex (changes the success rate, not the vertex spread)",
        "ratio denominator": "not in the code release; we divide by the mean L2 distance of 2,000 random "
                             "pairs of test images",
        "stopping": "theirs: none, the spread at the budget; ours keeps the stopping rule, so distance_ratio "
                    "is null unless the search converged and distance_ratio_all is their protocol's number",
    },
)

SETTINGS: dict[str, PolytopeSetting] = {LI2019.name: LI2019}


def get_setting(name: str) -> PolytopeSetting:
    """The setting called ``name``; ValueError listing the known names otherwise."""
    if name not in SETTINGS:
        raise ValueError(f"unknown polytope setting {name!r}; choose one of: {', '.join(SETTINGS)}")
    return SETTINGS[name]
