"""Clean accuracy on the first ``n`` eval images (per sample, exact under sharding)."""

from __future__ import annotations

import torch

from regcollide._modes import eval_mode
from regcollide.evaluation.registry import Part, PartContext, PartOutcome, register_part
from regcollide.evaluation.sharding import gather_objects, shard


@torch.no_grad()
def predictions(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted classes (N,), batched so large eval sets fit in memory."""
    with eval_mode(model):
        out = [model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@register_part("clean", entry_key="clean_acc", order=0, per_sample=True, settings_keys=("n", "seed"))
class Clean(Part):
    def run(self, ctx: PartContext) -> PartOutcome:
        n = ctx.settings.n
        x, y = shard(ctx.images[:n], ctx.labels[:n], ctx.accelerator)
        correct = (predictions(ctx.model, x, ctx.settings.batch_size) == y).tolist()
        every = [c for part in gather_objects(correct, ctx.accelerator) for c in part]
        return PartOutcome(value=sum(every) / len(every))
