"""Compact-width distillation: a narrow student learns a wide, frozen teacher (replaces the task loss).

Tracks (``robust``):

- ``none``: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (NIPS workshop 2015):
  α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student(x), y), with p^T = softmax(logits / T).
- ``ard``: Goldblum, Fowl, Feizi & Goldstein, "Adversarially Robust Distillation" (AAAI 2020): the same,
  but the student's softened prediction is taken on x' = PGD on the student's cross-entropy
  (``regcollide.attacks.pgd.attack.PGD``), matched to the teacher's prediction on the clean x.
- ``rslad``: Zi, Zhao, Ma & Jiang, "Revisiting Adversarial Robustness Distillation: Robust Soft Labels
  Make Student Better" (ICCV 2021): hard labels are replaced by the teacher's soft labels everywhere,
  α · KL(p_teacher(x) ‖ p_student(x')) + (1 − α) · KL(p_teacher(x) ‖ p_student(x)), with x' maximising the
  first KL (``kl_pgd``); no temperature (T is ignored).

Anti-collision term (``feature_weight`` > 0): the student's pairwise distances between the penultimate
features (the input of its last ``nn.Linear``) of the batch must match the teacher's, each divided by its
mean (widths differ), with a Huber loss (the distance loss of Park, Kim, Lu & Cho, "Relational Knowledge
Distillation", CVPR 2019). If the teacher separates two inputs, a student that collides them pays.

The teacher is a run folder (``regcollide.runs.load_run``) or an ``nn.Module``; it is frozen, kept
in eval mode and moved to the student's device in ``setup``. With ``cache_teacher`` its outputs are kept
per ``batch["index"]``, valid only when an index always shows the same image (no augmentation): a
fingerprint of each image is stored, and at the first mismatch the cache is dropped with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regcollide.regularizers.adversarial import PGDAdversarialTraining, default_step, kl_pgd
from regcollide.regularizers.base import Regularizer, check_positive, model_device


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model``: the classifier head of the registry models."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head; feature_weight needs one")
    return linears[-1]


def normalized_distances(features: Tensor) -> Tensor:
    """Pairwise Euclidean distances of the rows of ``features`` ``(B, D)``, divided by their mean."""
    flat = features.flatten(1)
    first, second = torch.triu_indices(flat.shape[0], flat.shape[0], offset=1, device=flat.device)
    squared = (flat[first] - flat[second]).square().sum(dim=1)  # (B(B-1)/2,)
    distances = squared.clamp_min(1e-12).sqrt()  # clamp: identical images would give an infinite gradient
    return distances / distances.mean().clamp_min(1e-12)


def feature_distance_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Huber loss between the mean-normalised pairwise distance sets of student and teacher."""
    return F.smooth_l1_loss(normalized_distances(student_features), normalized_distances(teacher_features))


def softened_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)), batch mean, times T² so gradients keep their scale (Hinton)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1), reduction="batchmean") * temperature**2


class Distillation(Regularizer):
    """Knowledge distillation from a frozen teacher, with optional robust track and feature term.

    Args:
        teacher: run folder path or ``nn.Module`` (the wide model).
        temperature: softening temperature T (``none`` and ``ard``).
        alpha: weight of the teacher term; 1 − alpha goes to the hard-label (or clean-KL) term.
        robust: ``none`` (Hinton KD), ``ard`` or ``rslad``.
        eps, step_size, steps: the L∞ attack on the student for the robust tracks.
        feature_weight: weight of the pairwise penultimate-feature distance term (0 disables it).
        cache_teacher: keep teacher outputs per ``batch["index"]`` (only without augmentation).
    """

    name = "distill"
    replaces_task_loss = True

    def __init__(self, teacher: str | Path | nn.Module, temperature: float = 4.0, alpha: float = 0.9,
                 robust: Literal["none", "ard", "rslad"] = "none", eps: float = 0.1,
                 step_size: float | None = None, steps: int = 10, feature_weight: float = 0.0,
                 cache_teacher: bool = True):
        check_positive("temperature", temperature)
        check_positive("feature_weight", feature_weight, allow_zero=True)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        if not isinstance(teacher, nn.Module):
            from regcollide.runs import load_run

            teacher, _ = load_run(str(teacher))
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.robust = float(temperature), float(alpha), robust
        self.eps, self.step_size, self.steps = eps, step_size, steps
        self.feature_weight, self.cache_teacher = float(feature_weight), cache_teacher
        self._ard_attack = PGDAdversarialTraining(eps=eps, alpha=step_size, steps=steps)  # PGD on the student
        # Features of the latest forwards, in a dict so checkpointing (which saves tensor attributes)
        # never tries to serialise a tensor attached to the autograd graph.
        self._captured: dict[str, Tensor] = {}
        self._projection: Tensor | None = None
        self._cache: dict[int, tuple[Tensor, Tensor, Tensor | None]] = {}  # index -> (fingerprint, logits, feats)
        self._hooks = [last_linear(self.teacher).register_forward_pre_hook(self._keep_teacher_features)] \
            if self.feature_weight > 0 else []

    def setup(self, model: nn.Module) -> nn.Module:
        self.teacher.to(model_device(model))
        if self.feature_weight > 0:
            self._hooks.append(last_linear(model).register_forward_pre_hook(self._keep_student_features))
        return model

    def _keep_student_features(self, module: nn.Module, inputs: tuple) -> None:
        self._captured["student"] = inputs[0]  # (B, D_student), still attached to the graph

    def _keep_teacher_features(self, module: nn.Module, inputs: tuple) -> None:
        self._captured["teacher"] = inputs[0].detach()  # (B, D_teacher)

    def _fingerprints(self, images: Tensor) -> Tensor:
        """A fixed random projection of each image: flips, shifts and crops change it, unlike a plain sum."""
        flat = images.detach().flatten(1).double()  # (B, D)
        if self._projection is None or self._projection.shape[0] != flat.shape[1]:
            generator = torch.Generator().manual_seed(flat.shape[1])
            self._projection = torch.rand(flat.shape[1], generator=generator, dtype=torch.float64)
        return flat @ self._projection.to(flat.device)

    def teacher_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Teacher logits ``(B, K)`` (and penultimate features) on the clean batch, cached when allowed."""
        images = batch["image"]
        indices = batch.get("index")
        fingerprints = None
        if self.cache_teacher and indices is not None:
            fingerprints = self._fingerprints(images)  # (B,) cheap identity check, only when caching
            keys = indices.tolist()
            hits = [self._cache.get(key) for key in keys]
            if all(hit is not None for hit in hits):
                stored = torch.stack([hit[0] for hit in hits]).to(fingerprints.device)
                if torch.allclose(stored, fingerprints, rtol=1e-6, atol=1e-6):
                    logits = torch.stack([hit[1] for hit in hits])
                    feats = torch.stack([hit[2] for hit in hits]) if self.feature_weight > 0 else None
                    return logits, feats
                warnings.warn("distill: an index showed a different image (augmentation?); teacher outputs "
                              "are no longer cached", stacklevel=2)
                self.cache_teacher = False
                self._cache.clear()
        if model_device(self.teacher) != images.device:  # e.g. accelerate moved the student after setup
            self.teacher.to(images.device)
        with torch.no_grad():
            logits = self.teacher(images)  # (B, K)
        feats = self._captured["teacher"] if self.feature_weight > 0 else None
        if self.cache_teacher and indices is not None:
            for row, key in enumerate(indices.tolist()):
                self._cache[key] = (fingerprints[row], logits[row],
                                    feats[row] if feats is not None else None)
        return logits, feats

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        student_features = self._captured.get("student")  # read before an extra student forward replaces it
        teacher_logits, teacher_features = self.teacher_outputs(batch)
        images, labels = batch["image"], batch["label"]
        if self.robust == "rslad":
            target = F.softmax(teacher_logits, dim=1)
            step = default_step(self.eps, self.steps, self.step_size)
            adv = kl_pgd(model, images, target, self.eps, step, self.steps)
            loss = self.alpha * softened_kl(teacher_logits, model(adv), 1.0) \
                + (1 - self.alpha) * softened_kl(teacher_logits, outputs, 1.0)
        else:
            student_soft = outputs
            if self.robust == "ard":
                student_soft = model(self._ard_attack.adversarial(model, images, labels))
            loss = self.alpha * softened_kl(teacher_logits, student_soft, self.temperature) \
                + (1 - self.alpha) * F.cross_entropy(outputs, labels)
        if self.feature_weight > 0:
            if student_features is None or student_features.shape[0] != outputs.shape[0]:
                raise ValueError("distill feature term: no penultimate features from the student's forward; "
                                 "call reg.setup(model) before training")
            loss = loss + self.feature_weight * feature_distance_loss(student_features, teacher_features)
        return loss
