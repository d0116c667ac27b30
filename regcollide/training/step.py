"""One training step's math: the objective (task loss + weighted regularizer terms), the metrics line, and
the clean test accuracy gathered over processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from regcollide._modes import eval_mode
from regcollide.training.state import TrainState


def regularizer_term(reg, model, batch, outputs) -> torch.Tensor:
    """The term, or NaN when its linear algebra fails (diverged weights): reported like a NaN loss."""
    try:
        return reg(model, batch, outputs)
    except torch.linalg.LinAlgError:
        return outputs.new_full((), float("nan"))


def training_step(model, raw_model, batch, regularizers, weights) -> tuple[torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
    """Forward pass and total loss; returns (loss, logits (B, K), per-term values (1 + R,))."""
    outputs = model(batch["image"])  # (B, K)
    replaced = any(reg.replaces_task_loss for reg in regularizers)
    task = outputs.new_zeros(()) if replaced else F.cross_entropy(outputs, batch["label"])
    # Regularizers see the unwrapped module (layer names without DDP's "module." prefix); their gradients
    # still reach DDP's hooks because those hang on the parameters themselves.
    terms = [regularizer_term(reg, raw_model, batch, outputs) for reg in regularizers]
    loss = task + sum((w * t for w, t in zip(weights, terms)), outputs.new_zeros(()))
    values = torch.stack([task.detach().float()] + [t.detach().float().reshape(()) for t in terms])
    return loss, outputs, values


def train_record(state: TrainState, names: list[str], sums: list[float], lr: float) -> dict:
    """One metrics.jsonl line from the window sums (per-term sums, loss sum, correct, count)."""
    count = max(sums[-1], 1.0)
    record = {"event": "train", "epoch": state.epoch, "step": state.global_step, "lr": lr,
              "loss": sums[-3] / count, "train_acc": sums[-2] / count}
    record.update({f"term/{name}": total / count for name, total in zip(names, sums)})
    return record


@torch.no_grad()
def evaluate_accuracy(model, loader, accelerator: Accelerator) -> float:
    """Clean accuracy over the whole (sharded) test loader; duplicates from padding are dropped."""
    correct = total = 0
    with eval_mode(model):
        for batch in loader:
            preds = model(batch["image"]).argmax(dim=1)  # (B,)
            preds, labels = accelerator.gather_for_metrics((preds, batch["label"]))
            correct += int((preds == labels).sum())
            total += labels.numel()
    return correct / max(total, 1)
