"""Early exit at index time: exit points, the pre-exit predictor, exit policies, and the encode
routine that really skips blocks.

Everything here is written against the layered-encoder interface (models/base.py), so it works
the same for `minilm` and the ImageBind trunks.  Vocabulary:

* exit block L = number of blocks run (0 = token embeddings, depth = full depth);
* k0 = the *superficial* block: every item runs blocks 0..k0-1, then the head at k0 gives the
  *superficial embedding* the predictor looks at;
* exit points = the blocks an item may stop after (all >= k0, the last is always full depth).

The encode routine (`encode_with_exits`): run k0 blocks on the whole batch, ask the policy for an
exit per item, then advance only the items still running, block by block; when the next exit point
is reached the items that stop there are taken out (head -> coarse embedding, hidden state of
their real tokens kept for the INT4 cache) and the batch shrinks.  So an item exiting at L pays for
exactly L blocks (a test counts block calls), and the items still running are regrouped into one
smaller batch (trailing padding columns dropped) at each exit point.

Policies (`parse_policy`, option `recall index --exit-policy`, env RECALL_EXIT_POLICY):
* `auto` (default): the trained predictor (<db>/predictor.safetensors, written by `recall heal`)
  when it exists, else `full`.  Raw (unhealed) intermediate layers embed badly: measured on
  all-MiniLM-L6-v2 / docstrings, R@10 0.73 at full depth vs 0.30 at block 5 (benchmarks/
  bench_early_exit.py prints every exit), so until healing exists the safe default is full depth:
  every item runs every block, its fine embedding is stored, nothing waits for refinement and no
  cache is kept.
* `full`: every block for every item (also what `recall index --full` pins for an index).
* `predictor`: the trained predictor (error if there is none).
* `fixed:L`: every item exits at exit point L (rounded up to an exit point).
* `mix:L1=p1,L2=p2,...`: a fixed exit distribution, assigned deterministically (benchmarks; random
  weights make the predictor meaningless there).

Training labels (`exit_labels`) come from the collection only, never from queries: an item's label
is the shallowest exit point whose (healed) embedding has cosine >= `threshold` (default 0.95) with
the item's own full-depth embedding (rule "cosine"); or, with rule "neighbours", whose k nearest
neighbours among the collection's items (k = 10) overlap those at full depth by >= `threshold`.
Items meeting no exit point get full depth.  `train_predictor` trains the MLP on (superficial
embedding, label) pairs with a held-out split *by file* and reports held-out accuracy; `recall
heal` (next issue) calls it and saves the result with `save_predictors`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import RecallError

POLICY_ENV = "RECALL_EXIT_POLICY"
PREDICTOR_FILE = "predictor.safetensors"


# ------------------------------------------------------------------------------------------------
# exit points
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExitPlan:
    depth: int
    k0: int  # superficial block: the predictor sees the head output after k0 blocks
    points: tuple[int, ...]  # sorted exit points, all in k0..depth, last == depth

    def snap(self, exit_block: int) -> int:
        """The shallowest exit point >= exit_block (full depth if none)."""
        for point in self.points:
            if point >= exit_block:
                return point
        return self.depth


# (model, modality) -> (k0, exit points).  Chosen: MiniLM k0 = 1 of 6 with every block an exit;
# ImageBind trunks k0 = depth/8 with an exit every depth/8 blocks (vision 4 of 32: 4, 8, ..., 32;
# text 3 of 24; audio 12 blocks: every block from 1).  See DESIGN notes in this module's docstring
# and benchmarks/bench_early_exit.py for the measured predictor accuracy per k0.
EXIT_CONFIG: dict[tuple[str, str], tuple[int, tuple[int, ...]]] = {
    ("minilm", "text"): (1, (1, 2, 3, 4, 5, 6)),
}


def exit_plan(model, modality: str) -> ExitPlan:
    depth = model.depth(modality)
    configured = EXIT_CONFIG.get((model.name, modality))
    if configured and configured[1][-1] == depth:
        k0, points = configured
        return ExitPlan(depth, k0, tuple(points))
    step = max(1, depth // 8)
    k0 = step
    points = tuple(range(k0, depth + 1, step))
    if points[-1] != depth:
        points = points + (depth,)
    return ExitPlan(depth, k0, points)


# ------------------------------------------------------------------------------------------------
# the pre-exit predictor
# ------------------------------------------------------------------------------------------------


class ExitPredictor(nn.Module):
    """A small MLP: superficial embedding [n, dim] -> logits over the exit points."""

    def __init__(self, dim: int, points: tuple[int, ...], hidden: int = 128):
        super().__init__()
        self.dim, self.points, self.hidden = dim, tuple(points), hidden
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, len(points)))

    def forward(self, superficial):
        return self.net(superficial.float())

    @torch.no_grad()
    def predict(self, superficial) -> list[int]:
        choice = self.forward(superficial.to(next(self.parameters()).device)).argmax(dim=-1)
        return [self.points[int(index)] for index in choice.cpu()]


def exit_labels(per_exit: dict[int, Any], full, points: tuple[int, ...], rule: str = "cosine",
                threshold: float | None = None, k: int = 10) -> list[int]:
    """Training labels from the collection itself (see the module docstring).

    per_exit: exit point -> [n, dim] unit-norm embeddings of the n items at that exit (healed ones
    once healing exists); full: [n, dim] full-depth embeddings of the same items."""
    full = torch.as_tensor(full).float()
    n = full.shape[0]
    depth = points[-1]
    labels = [depth] * n
    done = torch.zeros(n, dtype=torch.bool)
    if rule == "cosine":
        threshold = 0.95 if threshold is None else threshold
        for point in points[:-1]:
            if point not in per_exit:
                continue
            cos = (torch.as_tensor(per_exit[point]).float() * full).sum(-1)
            hit = (cos >= threshold) & ~done
            for index in hit.nonzero().flatten().tolist():
                labels[index] = point
            done |= hit
        return labels
    if rule == "neighbours":
        threshold = 0.5 if threshold is None else threshold
        k = max(1, min(k, n - 1))

        def neighbours(emb):
            sim = emb @ emb.T
            sim.fill_diagonal_(-math.inf)
            return sim.topk(k, dim=-1).indices

        reference = neighbours(full)
        for point in points[:-1]:
            if point not in per_exit:
                continue
            mine = neighbours(torch.as_tensor(per_exit[point]).float())
            overlap = (mine[:, :, None] == reference[:, None, :]).any(-1).float().mean(-1)
            hit = (overlap >= threshold) & ~done
            for index in hit.nonzero().flatten().tolist():
                labels[index] = point
            done |= hit
        return labels
    raise ValueError(f"unknown label rule {rule!r} (cosine or neighbours)")


def train_predictor(superficial, labels: list[int], points: tuple[int, ...], groups: list | None = None,
                    holdout: float = 0.2, epochs: int = 300, lr: float = 3e-3, hidden: int = 128,
                    seed: int = 0) -> tuple[ExitPredictor, dict]:
    """Train an ExitPredictor on (superficial embedding, exit label) pairs.

    The held-out split is by `groups` (file paths: all chunks of one file on the same side), a
    `holdout` fraction of the groups chosen with `seed`.  Returns the predictor (trained on the
    training split) and a report: held-out accuracy, the majority-class baseline, the fraction of
    held-out items given an exit at or deeper than their label ("safe"), sizes."""
    x = torch.as_tensor(superficial).float().cpu()
    index_of = {point: i for i, point in enumerate(points)}
    y = torch.tensor([index_of[label] for label in labels], dtype=torch.long)
    groups = list(range(len(labels))) if groups is None else list(groups)
    unique = sorted(set(groups), key=str)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(unique), generator=generator).tolist()
    n_held = int(round(len(unique) * holdout)) if len(unique) > 1 else 0
    held_groups = {unique[i] for i in order[:n_held]}
    held = torch.tensor([group in held_groups for group in groups], dtype=torch.bool)
    train = ~held
    torch.manual_seed(seed)
    predictor = ExitPredictor(x.shape[1], points, hidden)
    optimiser = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=1e-2)
    counts = torch.bincount(y[train], minlength=len(points)).float()
    weight = (counts.sum() / counts.clamp(min=1)) ** 0.5  # soften class imbalance
    loss_fn = nn.CrossEntropyLoss(weight=weight / weight.mean())
    predictor.train()
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = loss_fn(predictor(x[train]), y[train])
        loss.backward()
        optimiser.step()
    predictor.eval()
    report: dict = {"train_items": int(train.sum()), "heldout_items": int(held.sum()),
                    "heldout_files": n_held, "points": list(points)}
    with torch.no_grad():
        train_pred = predictor(x[train]).argmax(-1)
        report["train_accuracy"] = float((train_pred == y[train]).float().mean()) if train.any() else None
        if held.any():
            pred = predictor(x[held]).argmax(-1)
            report["heldout_accuracy"] = float((pred == y[held]).float().mean())
            majority = int(counts.argmax())
            report["majority_baseline"] = float((y[held] == majority).float().mean())
            report["heldout_safe"] = float((pred >= y[held]).float().mean())
            report["heldout_mean_exit"] = float(torch.tensor([points[i] for i in pred]).float().mean())
            report["heldout_mean_label"] = float(torch.tensor([points[i] for i in y[held]]).float().mean())
        else:
            report["heldout_accuracy"] = None
    return predictor, report


def save_predictors(path: Path, model_name: str, predictors: dict[str, ExitPredictor],
                    plans: dict[str, ExitPlan]) -> None:
    """One file for all modalities: tensors under "<modality>.<param>", shapes and exit points in
    the safetensors metadata."""
    import json

    from safetensors.torch import save_file

    tensors, meta = {}, {"model": model_name, "format": "recall-exit-predictor/1"}
    for modality, predictor in predictors.items():
        for key, value in predictor.state_dict().items():
            tensors[f"{modality}.{key}"] = value.detach().cpu().contiguous()
        meta[modality] = json.dumps({"dim": predictor.dim, "hidden": predictor.hidden,
                                     "points": list(predictor.points), "k0": plans[modality].k0,
                                     "depth": plans[modality].depth})
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_predictors(path: Path, model_name: str | None = None) -> dict[str, tuple[ExitPredictor, dict]]:
    """modality -> (predictor, {"k0", "depth", "points"}) from a file written by save_predictors."""
    import json

    from safetensors import safe_open

    out = {}
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
        if model_name and meta.get("model") not in (None, model_name):
            raise RecallError(f"{path} holds a predictor for model {meta.get('model')!r}, not {model_name!r}")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    for modality, text in meta.items():
        if modality in ("model", "format"):
            continue
        info = json.loads(text)
        predictor = ExitPredictor(info["dim"], tuple(info["points"]), info["hidden"])
        prefix = modality + "."
        predictor.load_state_dict({key[len(prefix):]: value for key, value in tensors.items()
                                   if key.startswith(prefix)})
        predictor.eval()
        out[modality] = (predictor, info)
    return out


# ------------------------------------------------------------------------------------------------
# policies
# ------------------------------------------------------------------------------------------------


class ExitPolicy:
    """Chooses an exit block per item.  `needs_superficial` False means the policy never looks at
    the superficial embedding (full depth: no reason to stop at k0 first)."""

    name = "policy"
    needs_superficial = True
    healed_source = None  # HealedSource: the index's healed exit path, once `recall heal` ran

    def is_full(self, modality: str) -> bool:
        return False

    def healed_for(self, model, modality: str):
        return self.healed_source.get(model, modality) if self.healed_source else None

    def choose(self, modality: str, plan: ExitPlan, superficial) -> list[int]:
        raise NotImplementedError


class FullDepthPolicy(ExitPolicy):
    name = "full"
    needs_superficial = False

    def is_full(self, modality: str) -> bool:
        return True

    def choose(self, modality, plan, superficial):
        return [plan.depth] * int(superficial.shape[0])


class FixedPolicy(ExitPolicy):
    def __init__(self, exit_block: int):
        self.exit_block = exit_block
        self.name = f"fixed:{exit_block}"

    def choose(self, modality, plan, superficial):
        return [plan.snap(max(self.exit_block, plan.k0))] * int(superficial.shape[0])


class MixPolicy(ExitPolicy):
    """A fixed exit distribution {exit: fraction}, assigned deterministically with a low-discrepancy
    sequence over the items seen (so any prefix of the items follows the distribution closely)."""

    def __init__(self, fractions: dict[int, float]):
        total = sum(fractions.values())
        self.fractions = {int(k): v / total for k, v in sorted(fractions.items())}
        self.name = "mix:" + ",".join(f"{k}={v:g}" for k, v in self.fractions.items())
        self.counter = 0

    def choose(self, modality, plan, superficial):
        out = []
        for _ in range(int(superficial.shape[0])):
            u = (self.counter * 0.6180339887498949 + 0.5) % 1.0
            self.counter += 1
            cumulative = 0.0
            chosen = plan.depth
            for exit_block, fraction in self.fractions.items():
                cumulative += fraction
                if u < cumulative:
                    chosen = exit_block
                    break
            out.append(plan.snap(max(chosen, plan.k0)))
        return out


class PredictorPolicy(ExitPolicy):
    """The trained predictor per modality; modalities without one run at full depth."""

    name = "predictor"

    def __init__(self, predictors: dict[str, tuple[ExitPredictor, dict]]):
        self.predictors = predictors

    def is_full(self, modality: str) -> bool:
        return modality not in self.predictors

    def choose(self, modality, plan, superficial):
        if modality not in self.predictors:
            return [plan.depth] * int(superficial.shape[0])
        predictor, _ = self.predictors[modality]
        return [plan.snap(max(exit_block, plan.k0)) for exit_block in predictor.predict(superficial)]


class HealedSource:
    """Loads the index's healed exit path (heal.load_healed) once per modality, on first use."""

    def __init__(self, db_dir: Path):
        self.db_dir = Path(db_dir)
        self.loaded: dict[str, Any] = {}

    def get(self, model, modality: str):
        if modality not in self.loaded:
            from .heal import load_healed

            self.loaded[modality] = load_healed(self.db_dir, model, modality)
        return self.loaded[modality]


def parse_policy(spec: str | None, db_dir: Path | None = None, model_name: str | None = None) -> ExitPolicy:
    """auto | full | predictor | fixed:L | mix:L=p,... (see the module docstring).  Once the
    index is healed, every policy but `full` uses the healed exits and the healed predictor."""
    policy = _parse_policy(spec, db_dir, model_name)
    if db_dir is not None and not isinstance(policy, FullDepthPolicy):
        from .heal import current_version

        if current_version(Path(db_dir)):
            policy.healed_source = HealedSource(Path(db_dir))
    return policy


def _parse_policy(spec: str | None, db_dir: Path | None, model_name: str | None) -> ExitPolicy:
    spec = (spec or os.environ.get(POLICY_ENV) or "auto").strip().lower()
    predictor_path = Path(db_dir) / PREDICTOR_FILE if db_dir else None
    if db_dir is not None:
        from .heal import current_dir

        healed_dir = current_dir(Path(db_dir))
        if healed_dir is not None and (healed_dir / PREDICTOR_FILE).exists():
            predictor_path = healed_dir / PREDICTOR_FILE
    if spec == "full":
        return FullDepthPolicy()
    if spec in ("auto", "predictor"):
        if predictor_path is not None and predictor_path.exists():
            return PredictorPolicy(load_predictors(predictor_path, model_name))
        if spec == "predictor":
            raise RecallError("no trained exit predictor in this index yet; run `recall heal` first "
                              "(or use --exit-policy full / fixed:L)")
        return FullDepthPolicy()
    try:
        if spec.startswith("fixed:"):
            return FixedPolicy(int(spec.split(":", 1)[1]))
        if spec.startswith("mix:"):
            pairs = [part.split("=") for part in spec.split(":", 1)[1].split(",") if part]
            return MixPolicy({int(k): float(v) for k, v in pairs})
    except ValueError:
        pass
    raise RecallError(f"unknown exit policy {spec!r}; use auto, full, predictor, fixed:L or mix:L=p,L=p")


# ------------------------------------------------------------------------------------------------
# the early-exit encode routine
# ------------------------------------------------------------------------------------------------


@dataclass
class ExitOutput:
    vectors: Any  # [n, dim] float32 unit-norm, on CPU: coarse (or fine, for full-depth items)
    exits: list[int]  # blocks each item really ran
    depth: int
    states: list[list[Any] | None] = field(default_factory=list)  # per item: [len_i, D] per sequence
    state_blocks: list[int | None] = field(default_factory=list)  # per item: blocks run when its state was taken
    adapter_version: int = 0  # healed adapters used for the early exits (0: none)
    block_calls: int = 0  # block() calls made for this batch
    sequence_blocks: int = 0  # sum over block calls of sequences processed


def _trim(batch):
    """Drop trailing columns that are padding in every sequence (exact: padding never influences
    real tokens in these encoders; positions were added before block 0)."""
    if batch.mask.numel() == 0:
        return batch
    real = batch.mask.any(dim=0).nonzero()
    last = int(real.max()) + 1 if len(real) else 1
    if last == batch.mask.shape[1]:
        return batch
    return type(batch)(batch.modality, batch.hidden[:, :last], batch.mask[:, :last], batch.owner, batch.n_items)


def _item_states(batch, local_items: list[int]) -> list[list[Any]]:
    out = []
    for item in local_items:
        rows = (batch.owner == item).nonzero().flatten().tolist()
        out.append([batch.hidden[row][batch.mask[row]].detach().cpu() for row in rows])
    return out


class _BasePath:
    """The un-adapted model: states are cached at the exit block itself."""

    def __init__(self, model, modality: str, out: ExitOutput):
        self.model, self.modality, self.out = model, modality, out

    def run(self, batch, start: int, stop: int):
        for index in range(start, stop):
            batch = batch.with_hidden(self.model.block(self.modality, index, batch.hidden, batch.mask))
            self.out.block_calls += 1
            self.out.sequence_blocks += int(batch.hidden.shape[0])
        return batch

    def embed(self, batch, exit_block: int):
        return self.model.embed(batch, exit_block)

    def resume_block(self, exit_block: int) -> int:
        return exit_block


class _HealedPath(_BasePath):
    """Healed exits (heal.HealedExits): adapted blocks and exit heads; states cached where they
    are still un-adapted, so refinement through the base blocks stays exact."""

    def __init__(self, healed, modality: str, out: ExitOutput):
        super().__init__(healed.model, modality, out)
        self.healed = healed

    def run(self, batch, start: int, stop: int):
        self.out.block_calls += stop - start
        self.out.sequence_blocks += (stop - start) * int(batch.hidden.shape[0])
        return self.healed.run(batch, start, stop)

    def embed(self, batch, exit_block: int):
        return self.healed.embed(batch, exit_block)

    def resume_block(self, exit_block: int) -> int:
        return self.healed.resume_block(exit_block)


def encode_with_exits(model, modality: str, data: list[Any], policy: ExitPolicy,
                      plan: ExitPlan | None = None, keep_states: bool = True) -> ExitOutput:
    """Encode one batch with early exit (see the module docstring).  Items that exit before full
    depth get their coarse embedding and (keep_states) the hidden state of their real tokens.
    With a healed index, items going to full depth continue on the base blocks and the others on
    the healed path."""
    plan = plan or exit_plan(model, modality)
    n = len(data)
    out = ExitOutput(torch.zeros(n, model.dim), [plan.depth] * n, plan.depth, [None] * n, [None] * n)
    base = _BasePath(model, modality, out)
    with torch.inference_mode():
        batch = model.tokenize(modality, data)
        if policy.is_full(modality):
            batch = base.run(batch, 0, plan.depth)
            out.vectors = model.embed(batch, plan.depth).float().cpu()
            return out
        batch = base.run(batch, 0, plan.k0)
        superficial = model.embed(batch, plan.k0)
        exits = [plan.snap(max(int(e), plan.k0)) for e in policy.choose(modality, plan, superficial)]
        out.exits = exits
        healed = policy.healed_for(model, modality)
        if healed is None:
            _advance(base, batch, list(range(n)), exits, plan, keep_states)
            return out
        out.adapter_version = healed.version
        # an exit this version did not heal (other --exits) moves to the next healed one
        exits = [min([h for h in healed.exits if h >= e], default=plan.depth) for e in exits]
        out.exits = exits
        full = [i for i, e in enumerate(exits) if e == plan.depth]
        early = [i for i, e in enumerate(exits) if e < plan.depth]
        for path, items in ((base, full), (_HealedPath(healed, modality, out), early)):
            if items:
                _advance(path, _trim(batch.select_items(items)), items, exits, plan, keep_states)
    return out


def _advance(path, group, alive: list[int], exits: list[int], plan: ExitPlan, keep_states: bool) -> None:
    """Run `group` (the items `alive`, hidden state after k0) along `path`: at each exit point the
    items stopping there get their embedding and leave, and the batch shrinks.  Each item's state
    is kept (for the INT4 cache) at the block the path says refinement resumes from."""
    out, position = path.out, plan.k0

    def keep_states_here():
        wanted = [local for local, item in enumerate(alive) if exits[item] < plan.depth
                  and out.states[item] is None and path.resume_block(exits[item]) == position]
        for local, item_states in zip(wanted, _item_states(group, wanted)):
            out.states[alive[local]] = item_states
            out.state_blocks[alive[local]] = position

    if keep_states:
        keep_states_here()
    for point in sorted({exits[item] for item in alive}):
        if point > position:
            group = path.run(group, position, point)
            position = point
            if keep_states:
                keep_states_here()
        stopping = [local for local, item in enumerate(alive) if exits[item] == point]
        for local, vector in zip(stopping, path.embed(group.select_items(stopping), point).float().cpu()):
            out.vectors[alive[local]] = vector
        keep = [local for local, item in enumerate(alive) if exits[item] != point]
        if not keep:
            break
        group = _trim(group.select_items(keep))
        alive = [alive[local] for local in keep]


def resume(model, modality: str, states: list[list[Any]], exits: list[int], plan: ExitPlan | None = None):
    """Full-depth embeddings [n, dim] of items from their hidden states at their exit blocks
    (states[i]: the item's sequences, [len, D] real tokens each, e.g. from quant.decode_blob):
    the remaining blocks run, grouped by exit block."""
    from .models.base import Batch

    plan = plan or exit_plan(model, modality)
    n = len(states)
    vectors = torch.zeros(n, model.dim)
    with torch.inference_mode():
        for point in sorted(set(exits)):
            items = [i for i in range(n) if exits[i] == point]
            sequences = [(local, seq) for local, i in enumerate(items) for seq in states[i]]
            longest = max(seq.shape[0] for _, seq in sequences)
            dim = sequences[0][1].shape[-1]
            hidden = torch.zeros(len(sequences), longest, dim, dtype=model.dtype or torch.float32,
                                 device=model.device)
            mask = torch.zeros(len(sequences), longest, dtype=torch.bool, device=model.device)
            for row, (_, seq) in enumerate(sequences):
                hidden[row, :seq.shape[0]] = seq.to(hidden.device, hidden.dtype)
                mask[row, :seq.shape[0]] = True
            owner = torch.tensor([local for local, _ in sequences], dtype=torch.long, device=model.device)
            batch = Batch(modality, hidden, mask, owner, len(items))
            batch = model.run_blocks(batch, point, plan.depth)
            emb = model.embed(batch, plan.depth).float().cpu()
            for local, i in enumerate(items):
                vectors[i] = emb[local]
    return vectors
