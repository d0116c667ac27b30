"""The study's outcomes for one trained model, through the library's public evaluators.

- structure: ``regcollide.audit.spectrum.audit`` on the trained weights (ν, μ, nullity(W1), per layer);
- clean accuracy, PGD robust accuracy at every ε of ``eps`` and the per-image minimal ε* (bisection) of
  ``regcollide.attacks.pgd.ease.evaluate_pgd`` (Madry et al. 2018) on ``n`` test images;
- the minimum-norm L∞ distance of FAB (Croce & Hein, ICML 2020; ``pyautoattack``'s ``FABAttack_PT``) on
  the first ``fab_n`` of those images: a second, attack-independent estimate of ε*;
- AutoAttack (standard) at ``autoattack_eps`` on the first ``autoattack_n`` images, for the stated subset;
- Null-space search (Ozbulak et al.) with ``valid_image=True``: does a valid colliding image exist;
- the polytope search of Li, Zhang & Malik (NeurIPS 2019): distance ratio at convergence.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from regcollide.attacks.autoattack import evaluate_autoattack
from regcollide.attacks.nullspace.search import evaluate_nullspace
from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.attacks.polytope.evaluate import evaluate_polytope
from regcollide.audit.spectrum import audit


def fab_min_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, n_iter: int = 100,
                 seed: int = 0, cap: float = 1.0) -> dict:
    """Per-image minimal L∞ distance found by untargeted FAB (Croce & Hein 2020); ``cap`` censors misses.

    Correctly classified images only; an image FAB does not fool within ``cap`` counts as ``cap`` (a lower
    bound, as PGD's censored ε*), misclassified ones as 0.
    """
    from pyautoattack.fab_pt import FABAttack_PT

    attack = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=n_iter, eps=cap, seed=seed,
                          device=images.device)
    with torch.no_grad():
        correct = model(images).argmax(1) == labels  # (N,)
    with torch.random.fork_rng(devices=[]):  # FAB reseeds the global generator
        adv = attack.perturb(images, labels)  # (N, C, H, W)
    with torch.no_grad():
        fooled = model(adv).argmax(1) != labels
    dist = (adv - images).abs().flatten(1).amax(1)  # (N,)
    star = torch.where(fooled, dist, torch.full_like(dist, cap))
    star = torch.where(correct, star, torch.zeros_like(star))
    among = star[correct].double().cpu().numpy()
    return {"n": len(labels), "n_iter": n_iter, "cap": cap, "clean_acc": float(correct.float().mean()),
            "median_eps_star": float(np.median(among)) if len(among) else None,
            "n_censored": int((correct & ~fooled).sum()), "eps_star": star.tolist()}


def _structure(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    result = audit(model, input_shape).to_dict()
    ratios = [layer["sigma_min"] / layer["sigma_max"] for layer in result["layers"]
              if layer.get("sigma_max") and layer.get("sigma_min") is not None]
    result["mean_sigma_ratio"] = float(np.mean(ratios)) if ratios else None
    result["n_params"] = sum(p.numel() for p in model.parameters())
    return result


def _pgd(model, images, labels, m: dict) -> dict:
    out = {}
    for eps in m["eps"]:
        res = evaluate_pgd(model, images, labels, eps=float(eps), steps=int(m["pgd_steps"]),
                           bisection_steps=int(m["bisection_steps"]) if eps == m["eps"][0] else 0,
                           checks=eps == m["eps"][0], check_n=int(m.get("pgd_check_n", 64)), seed=0).to_dict()
        if eps != m["eps"][0]:
            res.pop("eps_star"), res.pop("eps_star_censored")
        out[f"{float(eps):g}"] = res
    return out


def _optional(call) -> dict:
    """An evaluator that may not apply to a model (ValueError by the library's convention)."""
    try:
        return {"value": call().to_dict(), "reason": None}
    except ValueError as err:
        return {"value": None, "reason": f"{type(err).__name__}: {err}"}


def _nullspace(model, images, labels, m: dict, structure: dict, wanted: bool) -> dict:
    if not wanted:
        return {"value": None, "reason": "not in the design's Null-space subset (nullspace_seeds)"}
    if structure["first_nullity"] == 0:
        return {"value": None, "reason": "nullity(W1) = 0: no kernel, so no exact collision to search"}
    n = int(m["nullspace_n"])
    return _optional(lambda: evaluate_nullspace(model, images[:n], labels[:n], n=n, valid_image=True, seed=0))


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, m: dict,
            autoattack: bool, nullspace: bool = True) -> tuple[dict, dict]:
    """All outcomes of one model; returns (outcomes, seconds per outcome)."""
    model.eval()
    times, out = {}, {}
    steps = [("structure", lambda: _structure(model, tuple(images.shape[1:]))),
             ("pgd", lambda: _pgd(model, images, labels, m)),
             ("fab", lambda: fab_min_norm(model, images[:m["fab_n"]], labels[:m["fab_n"]], int(m["fab_iter"]))),
             ("nullspace", lambda: _nullspace(model, images, labels, m, out["structure"], nullspace)),
             ("polytope", lambda: _optional(lambda: evaluate_polytope(
                 model, images[:m["polytope_pool"]], labels[:m["polytope_pool"]],
                 vertices=int(m["polytope_vertices"]), samples=int(m["polytope_samples"]),
                 targets=int(m["polytope_targets"]), steps=int(m["polytope_steps"]), seed=0)))]
    if autoattack:
        steps.append(("autoattack", lambda: evaluate_autoattack(
            model, images[:m["autoattack_n"]], labels[:m["autoattack_n"]], eps=float(m["autoattack_eps"]),
            seed=0).to_dict()))
    # The weights are fixed from here on: attacks need input gradients only, so the parameters leave the
    # graph and a parametrized weight (frozen projection) is computed once, not at every forward pass.
    for param in model.parameters():
        param.requires_grad_(False)
    with parametrize.cached():
        for name, call in steps:
            start = time.perf_counter()
            out[name] = call()
            times[name] = round(time.perf_counter() - start, 2)
    return out, times
