"""The pre-exit predictor: from an item's superficial embedding (after k0 blocks, see plan.py), the
exit point it can stop at.  Its training labels, its training, and its file.

Training labels (`exit_labels`) come from the collection only, never from queries: an item's label
is the shallowest exit point whose (healed) embedding has cosine >= `threshold` (default 0.95) with
the item's own full-depth embedding (rule "cosine"); or, with rule "neighbours", whose k nearest
neighbours among the collection's items (k = 10) overlap those at full depth by >= `threshold`.
Items meeting no exit point get full depth.  `train_predictor` trains the MLP on (superficial
embedding, label) pairs with a held-out split *by file* and reports held-out accuracy; `recall
heal` (heal_run.py) calls it and saves the result with `save_predictors`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recall_cli.early_exit.plan import ExitPlan
from recall_cli.errors import RecallError

PREDICTOR_FORMAT = "recall-exit-predictor/1"
_META_KEYS = ("model", "format")  # file-wide metadata; every other key is one modality's predictor


class ExitPredictor(nn.Module):
    """A small MLP: superficial embedding [n, dim] -> logits over the exit points."""

    def __init__(self, dim: int, points: tuple[int, ...], hidden: int = 128):
        super().__init__()
        self.dim, self.points, self.hidden = dim, tuple(points), hidden
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, len(points)))

    def forward(self, superficial):
        return self.net(superficial.float())

    @torch.no_grad()
    def predict(self, superficial) -> list[int]:
        choice = self.forward(superficial.to(next(self.parameters()).device)).argmax(dim=-1)
        return [self.points[int(index)] for index in choice.cpu()]


# ------------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------------


def exit_labels(
    per_exit: dict[int, Any],
    full,
    points: tuple[int, ...],
    rule: str = "cosine",
    threshold: float | None = None,
    k: int = 10,
) -> list[int]:
    """Training labels from the collection itself (see the module docstring).

    per_exit: exit point -> [n, dim] unit-norm embeddings of the n items at that exit (healed ones
    once the index is healed); full: [n, dim] full-depth embeddings of the same items."""
    full = torch.as_tensor(full).float()
    if rule == "cosine":
        agreement = _cosine_agreement(full)
        threshold = 0.95 if threshold is None else threshold
    elif rule == "neighbours":
        agreement = _neighbour_agreement(full, k)
        threshold = 0.5 if threshold is None else threshold
    else:
        raise ValueError(f"unknown label rule {rule!r} (cosine or neighbours)")
    return _shallowest_agreeing_exit(per_exit, points, agreement, threshold, full.shape[0])


def _cosine_agreement(full: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per item: cosine of its embedding at an exit with its own full-depth embedding."""
    return lambda embeddings: (embeddings * full).sum(-1)


def _neighbour_agreement(full: torch.Tensor, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per item: the share of its k nearest neighbours at an exit that are also among its k
    nearest at full depth."""
    k = max(1, min(k, full.shape[0] - 1))

    def neighbours(embeddings):
        similarity = embeddings @ embeddings.T
        similarity.fill_diagonal_(-math.inf)  # an item is not its own neighbour
        return similarity.topk(k, dim=-1).indices

    reference = neighbours(full)

    def overlap(embeddings):
        mine = neighbours(embeddings)
        return (mine[:, :, None] == reference[:, None, :]).any(-1).float().mean(-1)

    return overlap


def _shallowest_agreeing_exit(
    per_exit: dict[int, Any],
    points: tuple[int, ...],
    agreement: Callable[[torch.Tensor], torch.Tensor],
    threshold: float,
    n: int,
) -> list[int]:
    labels = [points[-1]] * n
    labelled = torch.zeros(n, dtype=torch.bool)
    for point in points[:-1]:
        if point not in per_exit:
            continue
        hit = (agreement(torch.as_tensor(per_exit[point]).float()) >= threshold) & ~labelled
        for index in hit.nonzero().flatten().tolist():
            labels[index] = point
        labelled |= hit
    return labels


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


def train_predictor(
    superficial,
    labels: list[int],
    points: tuple[int, ...],
    groups: list | None = None,
    holdout: float = 0.2,
    epochs: int = 300,
    lr: float = 3e-3,
    hidden: int = 128,
    seed: int = 0,
) -> tuple[ExitPredictor, dict]:
    """Train an ExitPredictor on (superficial embedding, exit label) pairs.

    The held-out split is by `groups` (file paths: all chunks of one file on the same side), a
    `holdout` fraction of the groups chosen with `seed`.  Returns the predictor (trained on the
    training split) and a report: held-out accuracy, the majority-class baseline, the fraction of
    held-out items given an exit at or deeper than their label ("safe"), sizes."""
    x = torch.as_tensor(superficial).float().cpu()
    index_of = {point: i for i, point in enumerate(points)}
    y = torch.tensor([index_of[label] for label in labels], dtype=torch.long)
    groups = list(range(len(labels))) if groups is None else list(groups)
    held, n_held = _held_out_groups(groups, holdout, seed)
    train = ~held
    torch.manual_seed(seed)
    predictor = ExitPredictor(x.shape[1], points, hidden)
    counts = torch.bincount(y[train], minlength=len(points)).float()
    _fit(predictor, x[train], y[train], counts, epochs, lr)
    report: dict = {
        "train_items": int(train.sum()),
        "heldout_items": int(held.sum()),
        "heldout_files": n_held,
        "points": list(points),
    }
    report.update(_accuracy_report(predictor, x, y, train, held, counts, points))
    return predictor, report


def _held_out_groups(groups: list, holdout: float, seed: int) -> tuple[torch.Tensor, int]:
    """(mask of the items whose group is held out, number of groups held out).  A generator of its
    own, so the split does not depend on (or move) the global random state."""
    unique = sorted(set(groups), key=str)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(unique), generator=generator).tolist()
    n_held = int(round(len(unique) * holdout)) if len(unique) > 1 else 0
    held_groups = {unique[i] for i in order[:n_held]}
    return torch.tensor([group in held_groups for group in groups], dtype=torch.bool), n_held


def _fit(
    predictor: ExitPredictor, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, epochs: int, lr: float
) -> None:
    """Full-batch AdamW; class weights soften the imbalance (most items share one or two exits)."""
    optimiser = AdamW(list(predictor.parameters()), lr=lr, weight_decay=1e-2)
    weight = (counts.sum() / counts.clamp(min=1)) ** 0.5
    loss_fn = nn.CrossEntropyLoss(weight=weight / weight.mean())
    predictor.train()
    for _ in range(epochs):
        predictor.zero_grad(set_to_none=True)
        loss = loss_fn(predictor(x), y)
        loss.backward()
        optimiser.step()
    predictor.eval()


class AdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments, its defaults),
    written out for the predictor's few tensors: constructing the first torch.optim optimiser of a
    process imports torch._dynamo, 0.7 s on a 2-core CPU, twice what the whole 300-epoch fit costs,
    and a calibrating `recall index` trains no other."""

    def __init__(self, params: list, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.first = [torch.zeros_like(p) for p in params]
        self.second = [torch.zeros_like(p) for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        first_correction, second_correction = 1 - beta1**self.steps, 1 - beta2**self.steps
        for param, first, second in zip(self.params, self.first, self.second, strict=True):
            if param.grad is None:
                continue
            param.mul_(1 - self.lr * self.weight_decay)
            first.lerp_(param.grad, 1 - beta1)
            second.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
            denominator = (second / second_correction).sqrt_().add_(self.eps)
            param.addcdiv_(first, denominator, value=-self.lr / first_correction)


def _accuracy_report(
    predictor: ExitPredictor,
    x: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    held: torch.Tensor,
    counts: torch.Tensor,
    points: tuple[int, ...],
) -> dict:
    report: dict = {}
    with torch.no_grad():
        train_pred = predictor(x[train]).argmax(-1)
        report["train_accuracy"] = float((train_pred == y[train]).float().mean()) if train.any() else None
        if not held.any():
            report["heldout_accuracy"] = None
            return report
        pred = predictor(x[held]).argmax(-1)
        report["heldout_accuracy"] = float((pred == y[held]).float().mean())
        majority = int(counts.argmax())
        report["majority_baseline"] = float((y[held] == majority).float().mean())
        report["heldout_safe"] = float((pred >= y[held]).float().mean())
        report["heldout_mean_exit"] = float(torch.tensor([points[i] for i in pred]).float().mean())
        report["heldout_mean_label"] = float(torch.tensor([points[i] for i in y[held]]).float().mean())
    return report


# ------------------------------------------------------------------------------------------------
# the predictor file
# ------------------------------------------------------------------------------------------------


def save_predictors(
    path: Path, model_name: str, predictors: dict[str, ExitPredictor], plans: dict[str, ExitPlan]
) -> None:
    """One file for all modalities: tensors under "<modality>.<param>", shapes and exit points in
    the safetensors metadata.  Written to a temporary name and renamed, so a reader never sees
    half a file."""
    from safetensors.torch import save_file

    tensors, meta = {}, {"model": model_name, "format": PREDICTOR_FORMAT}
    for modality, predictor in predictors.items():
        for key, value in predictor.state_dict().items():
            tensors[f"{modality}.{key}"] = value.detach().cpu().contiguous()
        meta[modality] = json.dumps(
            {
                "dim": predictor.dim,
                "hidden": predictor.hidden,
                "points": list(predictor.points),
                "k0": plans[modality].k0,
                "depth": plans[modality].depth,
            }
        )
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_predictors(path: Path, model_name: str | None = None) -> dict[str, tuple[ExitPredictor, dict]]:
    """modality -> (predictor, {"k0", "depth", "points"}) from a file written by save_predictors."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
        if model_name and meta.get("model") not in (None, model_name):
            raise RecallError(f"{path} holds a predictor for model {meta.get('model')!r}, not {model_name!r}")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    for modality, text in meta.items():
        if modality in _META_KEYS:
            continue
        info = json.loads(text)
        predictor = ExitPredictor(info["dim"], tuple(info["points"]), info["hidden"])
        prefix = modality + "."
        predictor.load_state_dict(
            {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        )
        predictor.eval()
        out[modality] = (predictor, info)
    return out
