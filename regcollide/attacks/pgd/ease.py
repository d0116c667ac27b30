"""PGD ease: how easy a model is to break with PGD (Madry et al., ICLR 2018), measured several ways.

For each sample, ε* is the smallest budget at which PGD succeeds, found by bisection over ε; the report
gives clean and robust accuracy at ε, the median ε*, the mean number of steps to first success at ε,
and the success-vs-ε curve with its area, plus the sanity flags of `regcollide.attacks.checks`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from regcollide._modes import eval_mode
from regcollide.attacks import checks as sanity
from regcollide.attacks.checks import Flag
from regcollide.attacks.pgd.attack import NORMS, PGD


@dataclass
class PGDResult:
    """The `pgd` JSON contract of docs/design.md plus extras. Accuracies are fractions of all n samples."""

    norm: str
    eps: float
    steps: int
    restarts: int
    alpha: float
    seed: int
    n: int
    clean_acc: float
    robust_acc: float
    median_eps_star: float  # over median_eps_star_population: correctly classified samples only
    median_eps_star_all: float  # over all n samples, misclassified clean inputs counted as ε* = 0
    median_eps_star_population: str  # "correct": which samples median_eps_star is taken over
    mean_steps_to_success: float
    curve: list[dict]  # [{eps, success_rate, robust_acc}], success_rate among correctly classified samples
    curve_area: float
    eps_max: float
    n_censored: int
    median_censored: bool
    eps_star: list[float]  # per sample; 0 for misclassified clean inputs, eps_max when censored
    eps_star_censored: list[bool]
    bisection_steps: int
    flags: list[Flag] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def default_eps_max(norm: str, eps: float) -> float:
    """4ε, capped at 1 for L∞ (ε = 1 already reaches every image in the box)."""
    return min(4 * eps, 1.0) if norm == "linf" else 4 * eps


def evaluate_pgd(model: nn.Module, images: Tensor, labels: Tensor, norm: str = "linf", eps: float = 0.1,
                 steps: int = 40, restarts: int = 1, alpha: float | None = None,
                 eps_grid: list[float] | None = None, eps_max: float | None = None, bisection_steps: int = 7,
                 seed: int = 0, batch_size: int = 256, random_start: bool = True, checks: bool = True,
                 check_n: int = 256, stability_tol: float = 0.02, progress: bool = False) -> PGDResult:
    """Run PGD at ε, search the per-sample minimal ε*, build the curve and (optionally) the sanity flags.

    Conventions (pinned by tests):
      * PGD uses early stopping: a sample is broken at ε if any iterate fools the model.
      * ε* is searched only for correctly classified samples. Samples broken at ε bisect in [0, ε];
        the others are first attacked at ``eps_max`` and, if broken, bisect in [ε, eps_max]; if not, they
        are *censored*: ε* = eps_max and ``eps_star_censored`` is True. Hence ε* ≤ ε exactly for the
        samples broken at ε, by construction, even though PGD success is not monotone in ε. The step size
        scales with the probe's ε (α/ε fixed), so the probe at ε equals the fixed-ε run.
      * ``median_eps_star`` is the median over correctly classified samples, censored ones counted at
        eps_max (a lower bound of their true ε*; ``median_censored`` says when the median itself is one);
        ``median_eps_star_population`` says so ("correct"). It depends on clean accuracy through the
        population it is taken over, so ``median_eps_star_all`` gives the median over all n samples with
        misclassified ones at ε* = 0 (the budget at which they are already broken).
      * The curve is the empirical CDF of ε* among correctly classified samples, so it is monotone by
        construction and agrees with ``robust_acc`` at ε: robust_acc(g) = clean_acc · (1 − success_rate(g)).
        ``curve_area`` is its trapezoid area over [0, eps_max] divided by eps_max (1 = breaks at once).
      * ``mean_steps_to_success`` averages, over correctly classified samples broken at ε, the gradient
        steps taken before the first fooling iterate (earlier failed restarts count their full steps).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    sanity.check_batch(images, labels)  # finite, in [0, 1]: the evaluator contract
    eps_max = float(eps_max) if eps_max is not None else default_eps_max(norm, eps)
    if eps_max <= eps:
        raise ValueError(f"eps_max ({eps_max}) must be larger than eps ({eps})")
    if bisection_steps < 0:
        raise ValueError("bisection_steps must be >= 0")
    n, timings = len(images), {}
    attack = PGD(model, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                 restarts=restarts, batch_size=batch_size, seed=seed, progress=progress)

    t0 = time.perf_counter()
    with torch.no_grad(), eval_mode(model):
        correct = torch.cat([model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]
                             for i in range(0, n, batch_size)]) if n else torch.zeros(0, dtype=torch.bool)
    cidx = correct.nonzero()[:, 0]  # (M,) indices of correctly classified samples
    timings["clean"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fixed = attack(images[cidx], labels[cidx])
    timings["pgd"] = time.perf_counter() - t0
    broken = fixed.success  # (M,)

    t0 = time.perf_counter()
    quiet = copy.copy(attack)  # the bisection shows one bar of its own, not one PGD bar per step
    quiet.progress = False
    eps_star, censored = _bisect(quiet, images[cidx], labels[cidx], broken, eps, eps_max, bisection_steps,
                                 progress)
    timings["eps_star"] = time.perf_counter() - t0

    clean_acc = len(cidx) / n if n else float("nan")
    robust_acc = int((~broken).sum()) / n if n else float("nan")
    steps_to = fixed.first_success_step[broken].double()
    grid = sorted({float(g) for g in (eps_grid or np.linspace(0, eps_max, 17).tolist())} | {float(eps)})
    curve = [{"eps": g, "success_rate": _rate(eps_star, g),
              "robust_acc": clean_acc * (1 - _rate(eps_star, g))} for g in grid]

    flags: list[Flag] = []
    if checks:
        t0 = time.perf_counter()
        flags = _sanity_flags(model, images, labels, attack, alpha, broken, cidx, check_n, stability_tol)
        timings["checks"] = time.perf_counter() - t0

    all_star = torch.zeros(n, dtype=torch.float64)
    all_star[cidx.cpu()] = eps_star.double().cpu()
    all_cens = torch.zeros(n, dtype=torch.bool)
    all_cens[cidx.cpu()] = censored.cpu()
    # numpy's median averages the two middle values (torch's would take the lower one)
    median = float(np.median(eps_star.double().cpu().numpy())) if len(cidx) else float("nan")
    median_all = float(np.median(all_star.numpy())) if n else float("nan")
    return PGDResult(
        norm=norm, eps=float(eps), steps=steps, restarts=restarts, alpha=attack.alpha, seed=seed, n=n,
        clean_acc=clean_acc, robust_acc=robust_acc, median_eps_star=median, median_eps_star_all=median_all,
        median_eps_star_population="correct",
        mean_steps_to_success=float(steps_to.mean()) if len(steps_to) else float("nan"),
        curve=curve, curve_area=_area(curve, eps_max), eps_max=eps_max, n_censored=int(censored.sum()),
        median_censored=bool(len(cidx)) and median >= eps_max, eps_star=all_star.tolist(),
        eps_star_censored=all_cens.tolist(), bisection_steps=bisection_steps, flags=flags, timings=timings)


def _bisect(attack: PGD, x: Tensor, y: Tensor, broken: Tensor, eps: float, eps_max: float,
            iters: int, progress: bool = False) -> tuple[Tensor, Tensor]:
    """Vectorised bisection: all samples probe their own midpoint in one batched PGD call per iteration.

    With ``progress`` one bar counts the PGD calls: the probe at eps_max, then "bisection step k/n".
    """
    m = len(x)
    hi = torch.full((m,), eps, dtype=torch.float64, device=x.device)  # (M,) smallest ε known to break
    lo = torch.where(broken, torch.zeros_like(hi), hi)  # (M,) largest ε known (or taken) safe
    censored = torch.zeros(m, dtype=torch.bool, device=x.device)
    up = (~broken).nonzero()[:, 0]
    with tqdm(total=iters + bool(len(up)), desc=f"PGD-{attack.steps} {attack.norm} ε* search", unit="call",
              disable=not progress, leave=False) as bar:
        if len(up):
            bar.set_description(f"PGD-{attack.steps} {attack.norm} ε* probe at eps_max={eps_max:g}")
            top = attack(x[up], y[up], eps=torch.full((len(up),), eps_max, dtype=x.dtype, device=x.device))
            hi[up] = eps_max
            censored[up] = ~top.success
            bar.update()
        live = (~censored).nonzero()[:, 0]
        for step in range(iters if len(live) else 0):
            bar.set_description(f"PGD-{attack.steps} {attack.norm} ε* bisection step {step + 1}/{iters}")
            mid = (lo[live] + hi[live]) / 2
            ok = attack(x[live], y[live], eps=mid.to(x.dtype)).success
            hi[live] = torch.where(ok, mid, hi[live])
            lo[live] = torch.where(ok, lo[live], mid)
            bar.update()
    return hi, censored


def _rate(eps_star: Tensor, g: float) -> float:
    return float((eps_star <= g).double().mean()) if len(eps_star) else float("nan")


def _area(curve: list[dict], eps_max: float) -> float:
    pts = [(c["eps"], c["success_rate"]) for c in curve if c["eps"] <= eps_max]
    if any(math.isnan(r) for _, r in pts) or len(pts) < 2:
        return float("nan")
    xs, ys = zip(*pts)
    return float(np.trapezoid(ys, xs) / eps_max)


def _sanity_flags(model, images, labels, attack: PGD, alpha, broken, cidx, check_n, tol) -> list[Flag]:
    """Model checks on an evenly spaced subset (data may be sorted by class), attack checks on its
    correctly classified part."""
    n = len(images)
    pick = torch.zeros(n, dtype=torch.bool, device=images.device)
    pick[:: max(1, math.ceil(n / check_n))] = True  # (N,)
    flags = sanity.model_checks(model, images[pick], labels[pick])
    correct = torch.zeros_like(pick)
    correct[cidx] = True
    safe = correct.clone()
    safe[cidx[broken]] = False  # correctly classified and not broken at ε by the main run
    sub, n_sub = (pick & correct).nonzero()[:, 0], int(pick.sum())
    if not len(sub):
        return flags

    def acc(**changes) -> float:
        settings = {k: getattr(attack, k) for k in ("eps", "steps", "norm", "random_start", "restarts",
                                                    "batch_size", "seed")}
        settings.update(changes)
        # keep α/ε when ε changes; with more steps, a default α shrinks with them and a user's α stays
        settings["alpha"] = attack.alpha * settings["eps"] / attack.eps
        if "steps" in changes and alpha is None:
            settings["alpha"] = None
        return int((~PGD(attack.model, **settings)(images[sub], labels[sub]).success).sum()) / n_sub

    base = int((pick & safe).sum()) / n_sub
    half, large_eps = acc(eps=attack.eps / 2), (1.0 if attack.norm == "linf" else math.sqrt(images[0].numel()))
    large = acc(eps=large_eps)
    clean = len(sub) / n_sub
    flags += sanity.check_monotone([0.0, attack.eps / 2, attack.eps, large_eps], [clean, half, base, large])
    flags += sanity.check_large_eps(large, large_eps)
    flags += sanity.check_stability(base, acc(steps=2 * attack.steps), "steps", tol)
    if attack.random_start:
        flags += sanity.check_stability(base, acc(restarts=2 * attack.restarts), "restarts", tol)
    return flags
