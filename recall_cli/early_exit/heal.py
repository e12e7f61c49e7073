"""Training the healed exits (`recall heal`): self-distillation of each exit towards the full-depth
embedding, and the labels the exit predictor is trained on.  What is trained is stored and loaded
by adapters.py; the whole run (sampling, budget, versions, refresh) is heal_run.py.

Raw intermediate layers embed badly (MiniLM, docstrings: R@10 0.19-0.30 at blocks 1-5 against
0.73 at full depth).  Healing teaches each exit to land near the full-depth embedding of the same
file, with no labels: the full-depth embedding is the teacher.

What is trained, per modality (`mode`):
  * exit heads: initialised in closed form by ridge regression of the teacher on the base model's
    head output at that exit (`ridge_fit`); this alone lifts MiniLM exit 1 from R@10 0.16 to ~0.59.
  * LoRA adapters (`mode="lora"`) in the blocks between the superficial block k0 and the deepest
    exit.  Progressive: exits are healed shallow to deep; the stage for exit e trains only the
    adapters of the blocks new to it (previous exit .. e) and the head of e, reusing the
    already-trained, now frozen adapters of the blocks below (shared, not copied: one adapter set
    serves every exit).  Each stage gets time in proportion to the share of files expected to use
    that exit (estimated from the ridge heads), so the exits most files stop at are healed best.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from recall_cli.early_exit.adapters import ExitHeads, HealedExits, fresh_model, inject_lora, lora_parameters
from recall_cli.early_exit.encode import item_mean_head
from recall_cli.early_exit.plan import exit_plan
from recall_cli.early_exit.predictor import exit_labels
from recall_cli.errors import RecallError

MIN_STAGE_SHARE = 0.05  # an exit few files are expected to use still gets some training time
MIN_STAGE_STEPS = 5  # a stage whose time is already spent (an earlier one ran long) still trains a little
HEAD_LR_FACTOR = 0.3  # the head starts at the ridge optimum: it needs smaller steps than the adapters


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
    steps: int | None = None  # training steps in all (split like the time): reproducible, load-independent quality
    warm_from: str | None = None  # a version folder whose adapters and heads training starts from


@dataclass
class Sample:
    """Training material of one modality: decoded units, their teacher embeddings, file of each."""

    data: list
    teacher: torch.Tensor  # [n, dim] unit-norm full-depth embeddings
    files: list[str]
    train: list[int] = field(default_factory=list)  # indices used to train the adapters
    held: list[int] = field(default_factory=list)  # files held out from adapter training
    # what the base model gives at k0 and at each exit, when the encode that made the teachers
    # already computed it (calibrate_sample.py); else the healer runs the blocks itself
    superficial: torch.Tensor | None = None
    base_outputs: dict[int, torch.Tensor] | None = None
    # per unit {block: [t, dim] token states} at the exits and full depth (calibrate_sample.py)
    token_states: list[dict] | None = None


def batches(indices: list[int], size: int):
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def collect_head_outputs(
    model, modality: str, data: list, exits: list[int], k0: int, batch: int, healed: HealedExits | None = None
):
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
                    per_exit[e].append(item_mean_head(model, b, e).cpu())
    return {e: torch.cat(v) for e, v in per_exit.items()}, torch.cat(superficial)


def ridge_fit(
    features: torch.Tensor, targets: torch.Tensor, train: list[int], held: list[int]
) -> tuple[nn.Linear, dict]:
    """Closed-form linear head features -> targets; the ridge strength is chosen on the held-out
    files by mean cosine (no query is involved)."""
    x = torch.cat([features, torch.ones(len(features), 1)], 1).double()
    y, xt, check = targets.double(), x[train], held or train  # the larger strengths: a small sample overfits
    solutions = _ridge_solutions(xt.T @ xt, xt.T @ y[train], (1e-3, 1e-2, 1e-1, 1.0, 10.0))
    cos, alpha, w = max(
        ((float(F.cosine_similarity(x[check] @ w, y[check]).mean()), alpha, w) for alpha, w in solutions),
        key=lambda candidate: candidate[0],
    )
    return _linear(w), {"alpha": alpha, "heldout_cos": cos}


def token_ridge_fit(
    token_states: list[dict], exit_block: int, depth: int, pooled: torch.Tensor, sample: Sample
) -> tuple[nn.Linear, dict]:
    """Closed-form linear head from the training units' token states at the exit to the same tokens'
    states at full depth: for a token-mean head also a map of the pooled output (mean(W h) = W
    mean(h)), fitted on tens of rows per unit instead of one.  Ridge strength as in ridge_fit, on
    `pooled` (the units' mean head output at the exit) against the held-out files' teachers."""
    x = torch.cat([token_states[i][exit_block] for i in sample.train]).double()
    y = torch.cat([token_states[i][depth] for i in sample.train]).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    check = sample.held or sample.train
    pooled, teacher = torch.cat([pooled, torch.ones(len(pooled), 1)], 1).double()[check], sample.teacher[check].double()
    solutions = _ridge_solutions(x.T @ x, x.T @ y, (1e-4, 1e-3, 1e-2, 1e-1, 1.0))
    cos, alpha, w = max(
        ((float(F.cosine_similarity(pooled @ w, teacher).mean()), alpha, w) for alpha, w in solutions),
        key=lambda candidate: candidate[0],
    )
    return _linear(w), {"alpha": alpha, "heldout_cos": cos, "fit": "tokens", "token_rows": len(x)}


def _ridge_solutions(gram: torch.Tensor, cross: torch.Tensor, alphas: tuple[float, ...]):
    """(alpha, weights) per ridge strength (times the mean feature energy), one eigendecomposition."""
    scale = float(gram.diagonal().sum() / gram.shape[0])
    values, vectors = torch.linalg.eigh(gram)
    projected = vectors.T @ cross
    for alpha in alphas:
        yield alpha, vectors @ (projected / (values + alpha * scale)[:, None])


def _linear(w: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(w.shape[0] - 1, w.shape[1])
    with torch.no_grad():
        layer.weight.copy_(w[:-1].T.float())
        layer.bias.copy_(w[-1].float())
    return layer


def choose_labels(
    per_exit: dict[int, torch.Tensor], teacher: torch.Tensor, points: tuple[int, ...], target_compute: float
) -> tuple[list[int], float]:
    """Exit labels by the cosine rule (predictor.exit_labels): the shallowest exit whose healed
    embedding has cosine >= t with the item's own full-depth embedding.  t is the highest value
    whose labels keep mean blocks / depth <= target_compute (higher t: deeper exits, better
    quality, more compute), found by bisection."""
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

    def __init__(
        self, base_model, modality: str, options: HealOptions, progress: Callable[[str, int, float], None] | None = None
    ):
        self.base = base_model
        self.modality = modality
        self.options = options
        self.plan = exit_plan(base_model, modality)
        self.exits = [e for e in (options.exits or self.plan.points) if self.plan.k0 <= e < self.plan.depth]
        if not self.exits:
            raise RecallError(
                f"no exit points to heal for {modality}; give --exits between {self.plan.k0} and {self.plan.depth - 1}"
            )
        self.progress = progress or (lambda stage, step, loss: None)

    def heal(self, sample: Sample, deadline: float, version: int) -> tuple[HealedExits, dict]:
        """Heal every exit by `deadline` (time.time()).  Afterwards `healed_outputs` (exit -> healed
        embeddings of the sample) and `superficial` are what the predictor is trained on."""
        opts, k0 = self.options, self.plan.k0
        torch.manual_seed(opts.seed)  # reproducible: the heads' and adapters' initial weights come from it
        started = time.perf_counter()
        reused = sample.base_outputs is not None and set(self.exits) <= set(sample.base_outputs)
        if reused:
            base_outputs, superficial = sample.base_outputs, sample.superficial
        else:
            base_outputs, superficial = collect_head_outputs(
                self.base, self.modality, sample.data, self.exits, k0, opts.batch
            )
        healed, ridge = self._ridge_healed(base_outputs, sample, version)
        shares = self._expected_exit_shares(healed, base_outputs, sample)
        stages, warm = [], None
        if opts.mode == "lora":
            root = inject_lora(healed.model, self.modality, range(k0, max(self.exits)), opts.rank)
            warm = warm_start(healed, root, self.options.warm_from)
            stages = self._train_progressive(healed, root, sample, shares, deadline)
        healed.heads.eval().requires_grad_(False)
        if opts.mode == "lora":
            healed_outputs, _ = collect_head_outputs(
                healed.model, self.modality, sample.data, self.exits, k0, opts.batch, healed=healed
            )
        else:  # heads only: the blocks are the base ones, so the heads on their outputs are the healed exits
            healed_outputs = self._head_embeddings(healed, base_outputs)
        report = {
            "modality": self.modality,
            "mode": opts.mode,
            "k0": k0,
            "depth": self.plan.depth,
            "exits": self.exits,
            "rank": opts.rank,
            "units": len(sample.data),
            "reused_encode_states": reused,
            "warm_start": warm,
            "train_units": len(sample.train),
            "heldout_units": len(sample.held),
            "ridge": {str(e): ridge[e] for e in self.exits},
            "ridge_label_shares": shares,
            "stages": stages,
            "seconds": time.perf_counter() - started,
            "cosine": {str(e): _split_cos(healed_outputs[e], sample) for e in self.exits},
            "raw_cosine": {str(e): _split_cos(F.normalize(base_outputs[e], dim=-1), sample) for e in self.exits},
        }
        self.healed_outputs, self.superficial = healed_outputs, superficial
        return healed, report

    def _ridge_healed(
        self, base_outputs: dict[int, torch.Tensor], sample: Sample, version: int
    ) -> tuple[HealedExits, dict[int, dict]]:
        """A fresh model copy with every exit head set to its ridge fit (no adapters yet)."""
        model = fresh_model(self.base.name, device=str(self.base.device))
        heads = ExitHeads(self.base.dim, self.exits).to(model.device)
        ridge = {}
        for e in self.exits:
            layer, ridge[e] = ridge_fit(base_outputs[e], sample.teacher, sample.train, sample.held)
            if sample.token_states is not None:
                tokens, fit = token_ridge_fit(sample.token_states, e, self.plan.depth, base_outputs[e], sample)
                if fit["heldout_cos"] > ridge[e]["heldout_cos"]:  # the held-out files decide, as for alpha
                    layer, ridge[e] = tokens, fit
            heads.maps[str(e)].load_state_dict(layer.state_dict())
        return HealedExits(self.modality, version, self.options.mode, self.plan.k0, self.exits, model, heads), ridge

    def _expected_exit_shares(
        self, healed: HealedExits, base_outputs: dict[int, torch.Tensor], sample: Sample
    ) -> dict[int, float]:
        """exit -> share of the sample the predictor labels would send there with the ridge heads
        alone: an estimate of how many files will use each exit, to split the training time."""
        ridge_embeddings = self._head_embeddings(healed, base_outputs)
        labels, _ = choose_labels(ridge_embeddings, sample.teacher, self.plan.points, self.options.target_compute)
        return {e: labels.count(e) / len(labels) for e in self.exits}

    def _head_embeddings(self, healed: HealedExits, base_outputs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """exit -> the exit heads' unit-norm embeddings of the base model's mean head outputs."""
        with torch.no_grad():
            heads = {e: healed.heads.head(e)(base_outputs[e].to(healed.model.device)) for e in self.exits}
        return {e: F.normalize(out.cpu(), dim=-1) for e, out in heads.items()}

    def _train_progressive(
        self, healed: HealedExits, root, sample: Sample, shares: dict[int, float], deadline: float
    ) -> list[dict]:
        """One stage per exit above k0, shallow to deep (see the module docstring)."""
        k0 = self.plan.k0
        trainable_exits = [e for e in self.exits if e > k0]
        weights = {e: max(shares.get(e, 0.0), MIN_STAGE_SHARE) for e in trainable_exits}
        total_weight = sum(weights.values())
        rng = random.Random(self.options.seed)
        stages, previous = [], k0
        for e in trainable_exits:
            # this stage's share of the time still left: a stage that ran long shortens the later ones
            budget = max(0.0, deadline - time.time()) * weights[e] / total_weight
            steps = None
            if self.options.steps is not None:  # a step count instead of a clock: same result on any machine
                steps = max(MIN_STAGE_STEPS, round(self.options.steps * weights[e] / sum(weights.values())))
            total_weight -= weights[e]
            stages.append(self._train_stage(healed, root, sample, range(previous, e), budget, rng, steps))
            previous = e
        return stages

    def _train_stage(
        self,
        healed: HealedExits,
        root,
        sample: Sample,
        new_blocks: range,
        budget: float,
        rng: random.Random,
        step_quota: int | None = None,
    ) -> dict:
        """Train the adapters of `new_blocks` and the head of the exit they end at for `budget`
        seconds (or exactly `step_quota` steps), then freeze both."""
        opts, exit_block = self.options, new_blocks.stop
        params = lora_parameters(root, new_blocks, healed.model, self.modality)
        head = healed.heads.head(exit_block)
        head.requires_grad_(True)
        optimiser = torch.optim.AdamW(
            [{"params": params, "lr": opts.lr}, {"params": head.parameters(), "lr": opts.lr * HEAD_LR_FACTOR}]
        )
        stage_end, stage_start = time.time() + budget, time.time()
        steps, loss_value = 0, float("nan")
        while _stage_goes_on(steps, stage_end, step_quota):
            chosen = rng.sample(sample.train, min(opts.batch, len(sample.train)))
            loss = self._loss(
                healed, [sample.data[i] for i in chosen], sample.teacher[chosen], new_blocks.start, exit_block
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            steps += 1
            loss_value = loss.item()
            self.progress(f"{self.modality} exit {exit_block}", steps, loss_value)
        head.requires_grad_(False)
        for p in params:
            p.requires_grad_(False)
        trainable = sum(p.numel() for p in params) + sum(p.numel() for p in head.parameters())
        return {
            "exit": exit_block,
            "new_blocks": [new_blocks.start, new_blocks.stop],
            "steps": steps,
            "seconds": budget if step_quota is None else time.time() - stage_start,
            "final_loss": loss_value,
            "trainable_params": trainable,
        }

    def _loss(self, healed: HealedExits, data: list, teacher: torch.Tensor, frozen_until: int, exit_block: int):
        """Distillation (1 - cosine with the teacher) plus an in-batch contrastive term that keeps
        different files apart, so exits do not collapse towards an average embedding."""
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


def warm_start(healed: HealedExits, root, folder) -> str | None:
    """Start from an earlier version's adapters and heads (calibration's, or the last heal's) where
    they fit this run (same mode, k0 and rank; every exit head present): training continues from
    them instead of from zero adapters and ridge heads.  The folder it started from, or None."""
    import json
    from pathlib import Path

    from recall_cli.early_exit.adapters import modality_tensors
    from recall_cli.storage.layout import HEADS_FILE, HEAL_REPORT, LORA_FILE

    if not folder or root is None or not (Path(folder) / HEAL_REPORT).exists():
        return None
    folder = Path(folder)
    info = json.loads((folder / HEAL_REPORT).read_text()).get("modalities", {}).get(healed.modality) or {}
    fits = info.get("mode") == "lora" and info.get("k0") == healed.k0 and set(healed.exits) <= set(info["exits"])
    if not fits:
        return None
    own = root.state_dict()
    lora = {name: value for name, value in modality_tensors(folder / LORA_FILE, healed.modality).items() if name in own}
    if not lora or any(own[name].shape != value.shape for name, value in lora.items()):
        return None
    heads = modality_tensors(folder / HEADS_FILE, healed.modality)
    with torch.no_grad():
        root.load_state_dict(lora, strict=False)
        for e in healed.exits:
            healed.heads.head(e).weight.copy_(heads[f"maps.{e}.weight"])
            healed.heads.head(e).bias.copy_(heads[f"maps.{e}.bias"])
    return str(folder)


def _stage_goes_on(steps: int, stage_end: float, step_quota: int | None) -> bool:
    if step_quota is not None:
        return steps < step_quota
    return time.time() < stage_end or steps < MIN_STAGE_STEPS


def _split_cos(embeddings: torch.Tensor, sample: Sample) -> dict:
    """Mean cosine with the teacher on the training units and on the held-out files."""
    cos = (embeddings * sample.teacher).sum(-1)
    out = {"train_mean": float(cos[sample.train].mean()) if sample.train else None}
    if sample.held:
        out["heldout_mean"] = float(cos[sample.held].mean())
    return out
