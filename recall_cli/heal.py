"""`recall heal`: progressive LoRA healing of the early exits, and training of the exit predictor.

Raw intermediate layers embed badly (MiniLM, docstrings: R@10 0.19-0.30 at blocks 1-5 against
0.73 at full depth).  Healing teaches each exit to land near the full-depth embedding of the same
file, with no labels: the full-depth embedding is the teacher (self-distillation).

What is trained, per modality (`mode`):
  * exit heads: one linear map per exit point applied to the head output (before averaging clips
    and normalising).  Initialised in closed form by ridge regression of the teacher on the base
    model's head output at that exit; this alone lifts MiniLM exit 1 from R@10 0.16 to ~0.59.
  * LoRA adapters (peft, `mode="lora"`) on every linear layer of the blocks between the
    superficial block k0 and the deepest exit.  Progressive: exits are healed shallow to deep;
    the stage for exit e trains only the adapters of the blocks new to it (previous exit .. e) and
    the head of e, reusing the already-trained, now frozen adapters of the blocks below (shared,
    not copied: one adapter set serves every exit).  A step scheduler gives each stage time in
    proportion to the share of files expected to use that exit (estimated from the ridge heads).

Refinement stays exact: blocks 0..k0-1 are never adapted, and a file that exits at a healed
exit caches its *un-adapted* state after block k0 (the blob records block k0); refinement resumes
the base blocks from there, so the fine embedding equals the true full-depth one (INT4 error
aside).  Caching the adapted state at the exit block was measured and rejected (MiniLM,
docstrings, LoRA on blocks 1-2 for exit 3, 150 steps): resuming the base blocks from it gave
cosine 0.60 on average with the true full-depth embedding (min 0.28), and 0.95 (min 0.85) with an
extra loss on the resumed embedding, far from the 0.99 refinement needs.  The price: refining a healed row runs depth-k0 blocks
instead of depth-exit.

Files (in the index directory, versioned; an interrupted heal leaves the previous version in use):
    adapters/v<N>/lora.safetensors, heads.safetensors, predictor.safetensors, heal.json
    adapters/CURRENT   the version in use (replaced atomically, last)
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RecallError

log = logging.getLogger("recall")

ADAPTERS_DIR = "adapters"
CURRENT_FILE = "CURRENT"
HEAL_LOCK = "heal.lock"
MIN_UNITS = 16  # fewer units of a modality than this: nothing worth healing


@dataclass
class HealOptions:
    budget_minutes: float = 10.0  # wall time for the whole heal (sampling, training, predictor)
    mode: str = "lora"  # "lora": LoRA in blocks + exit heads; "heads": exit heads only
    exits: tuple[int, ...] | None = None  # exit points to heal (default: the model's plan)
    rank: int = 8
    lr: float = 1e-3
    batch: int = 16
    sample: int = 2000  # most units used for training
    target_compute: float = 0.6  # predictor labels chosen so mean blocks / depth stays at or below
    contrastive: float = 0.1  # weight of the in-batch contrastive term
    temperature: float = 0.05
    seed: int = 0
    device: str | None = None


# ------------------------------------------------------------------------------------------------
# the healed exit path
# ------------------------------------------------------------------------------------------------


class ExitHeads(nn.Module):
    """One linear map per exit point, applied to per-sequence head outputs."""

    def __init__(self, dim: int, exits: list[int]):
        super().__init__()
        self.maps = nn.ModuleDict({str(e): nn.Linear(dim, dim) for e in exits})
        for layer in self.maps.values():
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def head(self, exit_block: int) -> Callable:
        return self.maps[str(exit_block)]


def lora_root_and_targets(model, modality: str, blocks: range):
    root, names = None, []
    for index in blocks:
        root, block_names = model.lora_targets(modality, index)
        names.extend(block_names)
    return root, names


def inject_lora(model, modality: str, blocks: range, rank: int) -> nn.Module | None:
    """Put LoRA adapters (peft) on the linear layers of `blocks` of the model's trunk."""
    from peft import LoraConfig, inject_adapter_in_model

    if len(blocks) == 0:
        return None
    root, names = lora_root_and_targets(model, modality, blocks)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=names, bias="none")
    inject_adapter_in_model(config, root)
    for name, parameter in root.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return root


def lora_parameters(root: nn.Module | None, blocks: range, model, modality: str) -> list[nn.Parameter]:
    if root is None:
        return []
    _, names = lora_root_and_targets(model, modality, blocks)
    prefixes = tuple(name + "." for name in names)
    return [p for n, p in root.named_parameters() if "lora_" in n and n.startswith(prefixes)]


@dataclass
class HealedExits:
    """One modality's healed exit path: an adapted copy of the model (its own instance, so queries
    and refinement on the shared base model never see an adapter) and the exit heads."""

    modality: str
    version: int
    mode: str
    k0: int
    exits: list[int]
    model: object  # LayeredEncoder with LoRA in blocks k0..max(exits)-1 (mode "lora")
    heads: ExitHeads

    def resume_block(self, exit_block: int) -> int:
        """Where the cached (un-adapted) state of an item exiting here is taken."""
        return self.k0 if self.mode == "lora" else exit_block

    def run(self, batch, start: int, stop: int):
        return self.model.run_blocks(batch, start, stop)

    def embed(self, batch, exit_block: int):
        return self.model.embed(batch, exit_block, exit_head=self.heads.head(exit_block))


def fresh_model(name: str, device=None, weights=None):
    """A model instance of its own (not the per-process shared one) to carry adapters."""
    from .models import build_model

    return build_model(name, device, None, weights)


# ------------------------------------------------------------------------------------------------
# versions on disk
# ------------------------------------------------------------------------------------------------


def adapters_root(db_dir: Path) -> Path:
    return Path(db_dir) / ADAPTERS_DIR


def current_version(db_dir: Path) -> int:
    pointer = adapters_root(db_dir) / CURRENT_FILE
    try:
        return int(pointer.read_text().strip())
    except (OSError, ValueError):
        return 0


def version_dir(db_dir: Path, version: int) -> Path:
    return adapters_root(db_dir) / f"v{version}"


def current_dir(db_dir: Path) -> Path | None:
    version = current_version(db_dir)
    return version_dir(db_dir, version) if version else None


def save_healed(folder: Path, healed: dict[str, HealedExits], report: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    lora, heads = {}, {}
    for modality, item in healed.items():
        if item.mode == "lora":
            root, _ = item.model.lora_targets(modality, item.k0)
            for name, value in root.state_dict().items():
                if "lora_" in name:
                    lora[f"{modality}/{name}"] = value.detach().cpu().contiguous()
        for name, value in item.heads.state_dict().items():
            heads[f"{modality}/{name}"] = value.detach().cpu().contiguous()
    save_file(lora, str(folder / "lora.safetensors"))
    save_file(heads, str(folder / "heads.safetensors"))
    (folder / "heal.json").write_text(json.dumps(report, indent=2, default=str))


def load_healed(db_dir: Path, base_model, modality: str) -> HealedExits | None:
    """The current version's healed exit path for one modality, or None."""
    from safetensors.torch import load_file

    version = current_version(db_dir)
    if not version:
        return None
    folder = version_dir(db_dir, version)
    report = json.loads((folder / "heal.json").read_text())
    info = report.get("modalities", {}).get(modality)
    if not info:
        return None
    exits, k0, mode = info["exits"], info["k0"], info["mode"]
    model = fresh_model(base_model.name, device=str(base_model.device) if base_model.device else None,
                        weights=report.get("weights"))
    heads = ExitHeads(model.dim, exits)
    prefix = modality + "/"
    heads.load_state_dict({k[len(prefix):]: v for k, v in load_file(str(folder / "heads.safetensors")).items()
                           if k.startswith(prefix)})
    if mode == "lora":
        root = inject_lora(model, modality, range(k0, max(exits)), info["rank"])
        state = {k[len(prefix):]: v for k, v in load_file(str(folder / "lora.safetensors")).items()
                 if k.startswith(prefix)}
        missing = [n for n, _ in root.named_parameters() if "lora_" in n and n not in state]
        if missing:
            raise RecallError(f"healed adapters in {folder} are incomplete; run `recall heal` again")
        root.load_state_dict(state, strict=False)
        root.requires_grad_(False)
    heads.to(model.device).eval().requires_grad_(False)
    return HealedExits(modality, version, mode, k0, list(exits), model, heads)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """Training material of one modality: decoded units, their teacher embeddings, file of each."""

    data: list
    teacher: torch.Tensor  # [n, dim] unit-norm full-depth embeddings
    files: list[str]
    train: list[int] = field(default_factory=list)  # indices used to train the adapters
    held: list[int] = field(default_factory=list)  # files held out from adapter training


def batches(indices: list[int], size: int):
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


def collect_head_outputs(model, modality: str, data: list, exits: list[int], k0: int, batch: int,
                         healed: HealedExits | None = None):
    """Per item: head outputs (averaged over its sequences) at every exit, the superficial
    embedding at k0, through the base model (or the healed path from k0 on)."""
    per_exit = {e: [] for e in exits}
    superficial = []
    with torch.inference_mode():
        for chunk in batches(list(range(len(data))), batch):
            b = model.tokenize(modality, [data[i] for i in chunk])
            b = model.run_blocks(b, 0, k0)
            superficial.append(model.embed(b, k0).cpu())
            position = k0
            for e in exits:
                if e > position:
                    b = (healed.run if healed else model.run_blocks)(b, position, e)
                    position = e
                if healed is not None:
                    per_exit[e].append(healed.embed(b, e).cpu())
                else:
                    per_exit[e].append(_item_mean(model, b, e).cpu())
    return {e: torch.cat(v) for e, v in per_exit.items()}, torch.cat(superficial)


def _item_mean(model, batch, exit_block: int):
    per_sequence = model.head(batch.modality, batch.hidden, batch.mask, exit_block).float()
    per_item = torch.zeros(batch.n_items, per_sequence.shape[1], device=per_sequence.device)
    per_item.index_add_(0, batch.owner, per_sequence)
    return per_item / torch.bincount(batch.owner, minlength=batch.n_items).clamp(min=1)[:, None]


def ridge_fit(features: torch.Tensor, targets: torch.Tensor, train: list[int], held: list[int]) -> tuple[nn.Linear, dict]:
    """Closed-form linear head features -> targets; the ridge strength is chosen on the held-out
    files by mean cosine (no query is involved)."""
    x = torch.cat([features, torch.ones(len(features), 1)], 1).double()
    y = targets.double()
    scale = float((x[train] ** 2).sum() / x.shape[1])
    best = None
    for alpha in (1e-3, 1e-2, 1e-1):
        xt = x[train]
        w = torch.linalg.solve(xt.T @ xt + alpha * scale * torch.eye(x.shape[1], dtype=x.dtype), xt.T @ y[train])
        check = held or train
        cos = float(F.cosine_similarity(x[check] @ w, y[check]).mean())
        if best is None or cos > best[0]:
            best = (cos, alpha, w)
    cos, alpha, w = best
    layer = nn.Linear(features.shape[1], targets.shape[1])
    with torch.no_grad():
        layer.weight.copy_(w[:-1].T.float())
        layer.bias.copy_(w[-1].float())
    return layer, {"alpha": alpha, "heldout_cos": cos}


def choose_labels(per_exit: dict[int, torch.Tensor], teacher: torch.Tensor, points: tuple[int, ...],
                  target_compute: float) -> tuple[list[int], float]:
    """Exit labels by the cosine rule (exits.exit_labels): the shallowest exit whose healed
    embedding has cosine >= t with the item's own full-depth embedding.  t is the highest value
    whose labels keep mean blocks / depth <= target_compute (higher t: deeper exits, better
    quality, more compute)."""
    from .exits import exit_labels

    depth = points[-1]
    low, high = 0.0, 1.0
    best = (exit_labels(per_exit, teacher, points, "cosine", 0.0), 0.0)
    for _ in range(20):
        middle = (low + high) / 2
        labels = exit_labels(per_exit, teacher, points, "cosine", middle)
        if sum(labels) / (len(labels) * depth) <= target_compute:
            best, low = (labels, middle), middle
        else:
            high = middle
    return best


class Healer:
    """Trains one modality.  `progress(stage, step, loss)` is called as training goes."""

    def __init__(self, base_model, modality: str, options: HealOptions,
                 progress: Callable[[str, int, float], None] | None = None):
        from .exits import exit_plan

        self.base = base_model
        self.modality = modality
        self.options = options
        self.plan = exit_plan(base_model, modality)
        self.exits = [e for e in (options.exits or self.plan.points) if self.plan.k0 <= e < self.plan.depth]
        if not self.exits:
            raise RecallError(f"no exit points to heal for {modality}; give --exits between "
                              f"{self.plan.k0} and {self.plan.depth - 1}")
        self.progress = progress or (lambda stage, step, loss: None)

    def heal(self, sample: Sample, deadline: float, version: int) -> tuple[HealedExits, dict]:
        opts, k0 = self.options, self.plan.k0
        torch.manual_seed(opts.seed)
        started = time.perf_counter()
        base_outputs, superficial = collect_head_outputs(self.base, self.modality, sample.data, self.exits, k0,
                                                         opts.batch)
        model = fresh_model(self.base.name, device=str(self.base.device))
        heads = ExitHeads(self.base.dim, self.exits).to(model.device)
        ridge = {}
        for e in self.exits:
            layer, ridge[e] = ridge_fit(base_outputs[e], sample.teacher, sample.train, sample.held)
            heads.maps[str(e)].load_state_dict(layer.state_dict())
        healed = HealedExits(self.modality, version, opts.mode, k0, self.exits, model, heads)
        ridge_embeddings = {e: F.normalize(heads.head(e)(base_outputs[e].to(model.device)).cpu(), dim=-1)
                            for e in self.exits}
        labels, _ = choose_labels(ridge_embeddings, sample.teacher, self.plan.points, opts.target_compute)
        shares = {e: labels.count(e) / len(labels) for e in self.exits}
        stages = []
        if opts.mode == "lora":
            root = inject_lora(model, self.modality, range(k0, max(self.exits)), opts.rank)
            stages = self._train_progressive(healed, root, sample, shares, deadline)
        heads.eval().requires_grad_(False)
        healed_outputs, _ = collect_head_outputs(model, self.modality, sample.data, self.exits, k0, opts.batch,
                                                 healed=healed)
        report = {
            "modality": self.modality, "mode": opts.mode, "k0": k0, "depth": self.plan.depth,
            "exits": self.exits, "rank": opts.rank, "units": len(sample.data),
            "train_units": len(sample.train), "heldout_units": len(sample.held),
            "ridge": {str(e): ridge[e] for e in self.exits}, "ridge_label_shares": shares,
            "stages": stages, "seconds": time.perf_counter() - started,
            "cosine": {str(e): _split_cos(healed_outputs[e], sample) for e in self.exits},
            "raw_cosine": {str(e): _split_cos(F.normalize(base_outputs[e], dim=-1), sample) for e in self.exits},
        }
        self.healed_outputs, self.superficial = healed_outputs, superficial
        return healed, report

    def _train_progressive(self, healed: HealedExits, root, sample: Sample, shares: dict[int, float],
                           deadline: float) -> list[dict]:
        opts, k0 = self.options, self.plan.k0
        trainable_exits = [e for e in self.exits if e > k0]
        weights = {e: max(shares.get(e, 0.0), 0.05) for e in trainable_exits}
        total_weight = sum(weights.values())
        rng = random.Random(opts.seed)
        stages, previous = [], k0
        for e in trainable_exits:
            budget = max(0.0, deadline - time.time()) * weights[e] / total_weight
            total_weight -= weights[e]
            new_blocks = range(previous, e)
            params = lora_parameters(root, new_blocks, healed.model, self.modality)
            head = healed.heads.head(e)
            head.requires_grad_(True)
            optimiser = torch.optim.AdamW([{"params": params, "lr": opts.lr},
                                           {"params": head.parameters(), "lr": opts.lr * 0.3}])
            stage_end = time.time() + budget
            steps, loss_value = 0, float("nan")
            while time.time() < stage_end or steps < 5:
                chosen = rng.sample(sample.train, min(opts.batch, len(sample.train)))
                loss = self._loss(healed, [sample.data[i] for i in chosen], sample.teacher[chosen], previous, e)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                steps += 1
                loss_value = loss.item()
                self.progress(f"{self.modality} exit {e}", steps, loss_value)
            head.requires_grad_(False)
            for p in params:
                p.requires_grad_(False)
            stages.append({"exit": e, "new_blocks": [new_blocks.start, new_blocks.stop], "steps": steps,
                           "seconds": budget, "final_loss": loss_value,
                           "trainable_params": sum(p.numel() for p in params) + sum(p.numel() for p in head.parameters())})
            previous = e
        return stages

    def _loss(self, healed: HealedExits, data: list, teacher: torch.Tensor, frozen_until: int, exit_block: int):
        model = healed.model
        teacher = teacher.to(model.device)
        with torch.no_grad():  # blocks below the new ones: base or already-trained (frozen) adapters
            batch = model.tokenize(self.modality, data)
            batch = model.run_blocks(batch, 0, frozen_until)
        batch = batch.with_hidden(batch.hidden.detach())
        batch = model.run_blocks(batch, frozen_until, exit_block)
        student = healed.embed(batch, exit_block)
        distill = (1 - (student * teacher).sum(-1)).mean()
        logits = student @ teacher.T / self.options.temperature
        contrast = F.cross_entropy(logits, torch.arange(len(data), device=logits.device))
        return distill + self.options.contrastive * contrast


def _split_cos(embeddings: torch.Tensor, sample: Sample) -> dict:
    cos = (embeddings * sample.teacher).sum(-1)
    out = {"train_mean": float(cos[sample.train].mean()) if sample.train else None}
    if sample.held:
        out["heldout_mean"] = float(cos[sample.held].mean())
    return out
