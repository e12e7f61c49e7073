"""The batched encode that really skips blocks (`encode_with_exits`), and its inverse for
refinement (`resume`: the remaining blocks from a cached hidden state).

`encode_with_exits`: run k0 blocks on the whole batch (plan.py), ask the policy (policy.py) for an
exit per item, then advance only the items still running, block by block; when the next exit
point is reached the items that stop there are taken out (head -> coarse embedding, hidden state
of their real tokens kept for the INT4 cache) and the batch shrinks.  So an item exiting at L pays
for exactly L blocks (a test counts block calls), and the items still running are regrouped into
one smaller batch (trailing padding columns dropped) at each exit point.  With a healed index the
early items run the healed exit path (adapters.py) and the full-depth ones the base blocks.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from recall_cli.early_exit.plan import ExitPlan, exit_plan
from recall_cli.early_exit.policy import ExitPolicy
from recall_cli.profiling import stage


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


def regroup(batch, items: list[int], drop_padding: bool = True):
    """The sub-batch of the given items (batch.select_items), without (`drop_padding`) the
    trailing columns that are padding in every sequence left (exact: padding never influences
    real tokens in these encoders; positions were added before block 0).  On one torch thread (a
    gather between blocks is a pass over memory; see models.device.one_torch_thread), with the
    padding columns cut before the copy rather than after."""
    from recall_cli.models.device import one_torch_thread

    with one_torch_thread():
        chosen = torch.as_tensor(items, dtype=torch.long, device=batch.owner.device)
        remap = torch.full((batch.n_items,), -1, dtype=torch.long, device=batch.owner.device)
        remap[chosen] = torch.arange(len(items), device=batch.owner.device)
        keep = remap[batch.owner] >= 0
        mask = batch.mask[keep]
        hidden = batch.hidden
        if drop_padding and mask.numel():
            real = mask.any(dim=0).nonzero()
            last = int(real.max()) + 1 if len(real) else 1
            hidden, mask = hidden[:, :last], mask[:, :last]
        return type(batch)(batch.modality, hidden[keep], mask, remap[batch.owner[keep]], len(items))


def item_states(batch, local_items: list[int]) -> list[list[Any]]:
    """Per item of the batch: the hidden state of each of its sequences, real tokens only, on CPU.
    One gather for the whole batch (every wanted sequence's real tokens, in order), then views
    into it: a copy per sequence cost ~0.5 ms each, a quarter of a MiniLM block at batch 32."""
    from recall_cli.models.device import one_torch_thread

    with one_torch_thread():
        return _item_states(batch, local_items)


def _item_states(batch, local_items: list[int]) -> list[list[Any]]:
    rows_of: dict[int, list[int]] = {}  # one pass over the owners, not one tensor search per item
    for row, item in enumerate(batch.owner.tolist()):
        rows_of.setdefault(item, []).append(row)
    rows = [row for item in local_items for row in rows_of.get(item, [])]
    if not rows:
        return [[] for _ in local_items]
    lengths = batch.mask.sum(dim=1)
    if rows == list(range(batch.mask.shape[0])):
        wanted = batch.mask
    elif rows == sorted(rows):  # in order (each row once): one gather of their real tokens
        chosen = torch.zeros(batch.mask.shape[0], dtype=torch.bool, device=batch.mask.device)
        chosen[rows] = True
        wanted, lengths = batch.mask & chosen[:, None], lengths[rows]
    else:
        index = torch.tensor(rows, dtype=torch.long, device=batch.mask.device)
        return _split_states(batch.hidden[index][batch.mask[index]], lengths[index], rows_of, local_items)
    return _split_states(batch.hidden[wanted], lengths, rows_of, local_items)


def _split_states(real_tokens, lengths, rows_of: dict, local_items: list[int]) -> list[list[Any]]:
    """Per item, views of its sequences' rows of `real_tokens` ([sum of lengths, D], in order)."""
    real_tokens = real_tokens.detach().to("cpu")  # a fresh tensor: the batch's own goes on
    pieces = iter(torch.split(real_tokens, lengths.tolist()))
    return [[next(pieces) for _ in rows_of.get(item, [])] for item in local_items]


class _BasePath:
    """The un-adapted model: states are cached at the exit block itself."""

    def __init__(self, model, modality: str, out: ExitOutput):
        self.model, self.modality, self.out = model, modality, out

    def run(self, batch, start: int, stop: int, stage_name: str = "remaining blocks"):
        for index in range(start, stop):
            with stage(stage_name):
                batch = batch.with_hidden(self.model.block(self.modality, index, batch.hidden, batch.mask))
            self.out.block_calls += 1
            self.out.sequence_blocks += int(batch.hidden.shape[0])
        return batch

    def embed(self, batch, exit_block: int):
        with stage("heads"):
            return self.model.embed(batch, exit_block)

    def resume_block(self, exit_block: int) -> int:
        return exit_block


class _HealedPath(_BasePath):
    """Healed exits (adapters.HealedExits): adapted blocks and exit heads; states cached where they
    are still un-adapted, so refinement through the base blocks stays exact."""

    def __init__(self, healed, modality: str, out: ExitOutput):
        super().__init__(healed.model, modality, out)
        self.healed = healed

    def run(self, batch, start: int, stop: int, stage_name: str = "remaining blocks (healed)"):
        self.out.block_calls += stop - start
        self.out.sequence_blocks += (stop - start) * int(batch.hidden.shape[0])
        with stage(stage_name):
            return self.healed.run(batch, start, stop)

    def embed(self, batch, exit_block: int):
        with stage("heads (healed)"):
            return self.healed.embed(batch, exit_block)

    def resume_block(self, exit_block: int) -> int:
        return self.healed.resume_block(exit_block)


def encode_with_exits(
    model, modality: str, data: list[Any], policy: ExitPolicy, plan: ExitPlan | None = None, keep_states: bool = True
) -> ExitOutput:
    """Encode one batch with early exit (see the module docstring).  Items that exit before full
    depth get their coarse embedding and (keep_states) the hidden state of their real tokens.
    With a healed index, items going to full depth continue on the base blocks and the others on
    the healed path."""
    plan = plan or exit_plan(model, modality)
    n = len(data)
    out = ExitOutput(torch.zeros(n, model.dim), [plan.depth] * n, plan.depth, [None] * n, [None] * n)
    base = _BasePath(model, modality, out)
    with torch.inference_mode():
        with stage("tokenising"):
            batch = model.tokenize(modality, data)
        if policy.is_full(modality):
            taps = live_taps()
            if taps:
                batch = _full_depth_tapped(base, batch, plan, data, taps)
            else:
                batch = base.run(batch, 0, plan.depth, "blocks (full depth)")
            out.vectors = base.embed(batch, plan.depth).float().cpu()
            return out
        batch = base.run(batch, 0, plan.k0, "first k0 blocks")
        with stage("predictor (k0 head + policy)"):
            # a fixed or mixed policy only counts the items: no head at k0 for it
            superficial = model.embed(batch, plan.k0) if policy.needs_superficial else torch.empty(n, 0)
            out.exits = [plan.snap(max(int(e), plan.k0)) for e in policy.choose(modality, plan, superficial)]
        with stage("healed exits (load)"):
            healed = policy.healed_for(model, modality)
        if healed is None:
            _advance(base, batch, list(range(n)), out.exits, plan, keep_states)
            return out
        _advance_healed(base, _HealedPath(healed, modality, out), batch, plan, keep_states)
    return out


# ------------------------------------------------------------------------------------------------
# feature taps: the states a full-depth encode passes through, for calibration (calibrate.py)
# ------------------------------------------------------------------------------------------------

_TAPS: list = []  # weak references to bound `record(modality, data, superficial, per_exit, batches)` methods


def add_feature_tap(record) -> None:
    """While `record`'s object lives (and until remove_feature_tap), every full-depth encode also
    hands it, per batch, what healing starts from: the superficial embedding at k0 and the mean head
    output at each exit point (item_mean_head), computed on the way to full depth at the cost of
    the heads only, and the batch (token states) at each exit point and at full depth.  Calibration
    uses it so its healer does not run the sample's blocks again."""
    _TAPS.append(weakref.WeakMethod(record))


def remove_feature_tap(record) -> None:
    _TAPS[:] = [ref for ref in _TAPS if ref() is not None and ref() != record]


def live_taps() -> list:
    _TAPS[:] = [ref for ref in _TAPS if ref() is not None]
    return [ref() for ref in _TAPS]


def _full_depth_tapped(base: _BasePath, batch, plan: ExitPlan, data: list, taps: list):
    """Full depth, stopping at k0 and at each exit point to take the features the taps want."""
    model, modality = base.model, base.modality
    batch = base.run(batch, 0, plan.k0, "blocks (full depth)")
    superficial = model.embed(batch, plan.k0).cpu()
    per_exit, passed, position = {}, {}, plan.k0
    for point in [p for p in plan.points if plan.k0 <= p < plan.depth]:
        batch = base.run(batch, position, point, "blocks (full depth)")
        position = point
        per_exit[point] = item_mean_head(model, batch, point).cpu()
        passed[point] = batch  # the token states too (a token-level fit of the exit heads)
    batch = base.run(batch, position, plan.depth, "blocks (full depth)")
    passed[plan.depth] = batch
    for record in taps:
        record(modality, data, superficial, per_exit, passed)
    return batch


def item_mean_head(model, batch, exit_block: int):
    """Per item: the mean raw head output of its sequences (what a ridge head is fitted on)."""
    per_sequence = model.head(batch.modality, batch.hidden, batch.mask, exit_block).float()
    per_item = torch.zeros(batch.n_items, per_sequence.shape[1], device=per_sequence.device)
    per_item.index_add_(0, batch.owner, per_sequence)
    return per_item / torch.bincount(batch.owner, minlength=batch.n_items).clamp(min=1)[:, None]


def _advance_healed(base: _BasePath, healed_path: _HealedPath, batch, plan: ExitPlan, keep_states: bool) -> None:
    """Split the batch after k0: full-depth items on the base blocks, the others on the healed path."""
    out, healed = base.out, healed_path.healed
    out.adapter_version = healed.version
    # an exit this version did not heal (other --exits) moves to the next healed one
    exits = [min([h for h in healed.exits if h >= e], default=plan.depth) for e in out.exits]
    out.exits = exits
    full = [i for i, e in enumerate(exits) if e == plan.depth]
    early = [i for i, e in enumerate(exits) if e < plan.depth]
    for path, items in ((base, full), (healed_path, early)):
        if items:
            with stage("regrouping"):
                group = regroup(batch, items)
            _advance(path, group, items, exits, plan, keep_states)


def _advance(path, group, alive: list[int], exits: list[int], plan: ExitPlan, keep_states: bool) -> None:
    """Run `group` (the items `alive`, hidden state after k0) along `path`: at each exit point the
    items stopping there get their embedding and leave, and the batch shrinks.  Each item's state
    is kept (for the INT4 cache) at the block the path says refinement resumes from."""
    out, position = path.out, plan.k0
    if keep_states:
        _keep_states_at(path, group, alive, exits, plan, position)
    for point in sorted({exits[item] for item in alive}):
        if point > position:
            group = path.run(group, position, point)
            position = point
            if keep_states:
                _keep_states_at(path, group, alive, exits, plan, position)
        stopping = [local for local, item in enumerate(alive) if exits[item] == point]
        with stage("regrouping"):  # every item stopping here (a fixed exit): no copy of the batch
            leaving = group if len(stopping) == len(alive) else regroup(group, stopping, drop_padding=False)
        for local, vector in zip(stopping, path.embed(leaving, point).float().cpu(), strict=True):
            out.vectors[alive[local]] = vector
        keep = [local for local, item in enumerate(alive) if exits[item] != point]
        if not keep:
            break
        with stage("regrouping"):
            group = regroup(group, keep)
        alive = [alive[local] for local in keep]


def _keep_states_at(path, group, alive: list[int], exits: list[int], plan: ExitPlan, position: int) -> None:
    """Take the states of the early-exiting items whose refinement resumes at `position` (once each)."""
    with stage("state capture"):
        _take_states(path, group, alive, exits, plan, position)


def _take_states(path, group, alive: list[int], exits: list[int], plan: ExitPlan, position: int) -> None:
    out = path.out
    wanted = [
        local
        for local, item in enumerate(alive)
        if exits[item] < plan.depth and out.states[item] is None and path.resume_block(exits[item]) == position
    ]
    if not wanted:  # most exit points of a group: nothing to take, no tensor work
        return
    for local, states in zip(wanted, item_states(group, wanted), strict=True):
        out.states[alive[local]] = states
        out.state_blocks[alive[local]] = position


def resume(model, modality: str, states: list[list[Any]], exits: list[int], plan: ExitPlan | None = None):
    """Full-depth embeddings [n, dim] of items from their hidden states at their exit blocks
    (states[i]: the item's sequences, [len, D] real tokens each, e.g. from quant.decode_blob):
    the remaining blocks run, grouped by exit block."""
    plan = plan or exit_plan(model, modality)
    n = len(states)
    vectors = torch.zeros(n, model.dim)
    with torch.inference_mode():
        for point in sorted(set(exits)):
            for items in _similar_lengths([i for i in range(n) if exits[i] == point], states):
                batch = _padded_batch(model, modality, [states[i] for i in items])
                batch = model.run_blocks(batch, point, plan.depth)
                emb = model.embed(batch, plan.depth).float().cpu()
                for local, i in enumerate(items):
                    vectors[i] = emb[local]
    return vectors


def _similar_lengths(items: list[int], states: list[list[Any]], keep: float = 0.75) -> list[list[int]]:
    """The items in batches of similar length, longest first: a batch is padded to its longest
    sequence, so a short item beside a long one (the last chunk of a file) would pay the long one's
    blocks (more than twice the work on a mix of lengths).  A batch takes items down to `keep` of
    its longest."""
    longest = {i: max(seq.shape[0] for seq in states[i]) for i in items}
    batches: list[list[int]] = []
    for i in sorted(items, key=lambda i: -longest[i]):
        if batches and longest[i] >= keep * longest[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _padded_batch(model, modality: str, item_sequences: list[list[Any]]):
    """One Batch of every sequence of the given items, zero-padded to the longest, on the model's
    device and dtype; owner maps each sequence row to its item."""
    from recall_cli.models.base import Batch

    sequences = [(local, seq) for local, item in enumerate(item_sequences) for seq in item]
    longest = max(seq.shape[0] for _, seq in sequences)
    dim = sequences[0][1].shape[-1]
    hidden = torch.zeros(len(sequences), longest, dim, dtype=model.dtype or torch.float32, device=model.device)
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool, device=model.device)
    for row, (_, seq) in enumerate(sequences):
        hidden[row, : seq.shape[0]] = seq.to(hidden.device, hidden.dtype)
        mask[row, : seq.shape[0]] = True
    owner = torch.tensor([local for local, _ in sequences], dtype=torch.long, device=model.device)
    return Batch(modality, hidden, mask, owner, len(item_sequences))
