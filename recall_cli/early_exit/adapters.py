"""The healed exit path as stored and loaded: exit heads, LoRA adapters in the blocks, and the
versioned files `recall heal` writes them to.  Training them is heal.py's job; this module only
holds what indexing and refresh need to *use* them.

What a healed modality is made of (`mode`):
  * exit heads: one linear map per exit point applied to the head output (before averaging clips
    and normalising);
  * LoRA adapters (peft, `mode="lora"`) on every linear layer of the blocks between the
    superficial block k0 and the deepest exit, one adapter set shared by every exit.

Refinement stays exact: blocks 0..k0-1 are never adapted, and a file that exits at a healed
exit caches its *un-adapted* state after block k0 (`HealedExits.resume_block`); refinement resumes
the base blocks from there, so the fine embedding equals the true full-depth one (INT4 error
aside).  Caching the adapted state at the exit block was measured and rejected (MiniLM,
docstrings, LoRA on blocks 1-2 for exit 3, 150 steps): resuming the base blocks from it gave
cosine 0.60 on average with the true full-depth embedding (min 0.28), and 0.95 (min 0.85) with an
extra loss on the resumed embedding, far from the 0.99 refinement needs.  The price: refining a
healed row runs depth-k0 blocks instead of depth-exit.

Files (in the index directory, named by storage/layout.py; versioned, so an interrupted heal
leaves the previous version in use):
    adapters/v<N>/lora.safetensors, heads.safetensors, predictor.safetensors, heal.json
    adapters/CURRENT   the version in use (replaced atomically, last)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from recall_cli.errors import RecallError
from recall_cli.storage.layout import HEADS_FILE, HEAL_REPORT, LORA_FILE, current_version, version_dir

# ------------------------------------------------------------------------------------------------
# the healed exit path
# ------------------------------------------------------------------------------------------------


class ExitHeads(nn.Module):
    """One linear map per exit point, applied to per-sequence head outputs.  Starts as the
    identity, so an untrained head leaves the base model's exit embedding unchanged."""

    def __init__(self, dim: int, exits: list[int]):
        super().__init__()
        self.maps = nn.ModuleDict({str(e): nn.Linear(dim, dim) for e in exits})
        for layer in self.maps.values():
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def head(self, exit_block: int) -> Callable:
        return self.maps[str(exit_block)]


def lora_root_and_targets(model, modality: str, blocks: range):
    """(the module the adapters are injected into, names of the linear layers of `blocks` in it)."""
    root, names = None, []
    for index in blocks:
        root, block_names = model.lora_targets(modality, index)
        names.extend(block_names)
    return root, names


def inject_lora(model, modality: str, blocks: range, rank: int) -> nn.Module | None:
    """Put LoRA adapters (peft) on the linear layers of `blocks` of the model's trunk; only the
    adapters are left trainable."""
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
    """The adapter parameters of `blocks` only (progressive healing trains a few blocks at a time)."""
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
    from recall_cli.models import build_model

    return build_model(name, device, None, weights)


# ------------------------------------------------------------------------------------------------
# versions on disk
# ------------------------------------------------------------------------------------------------


def current_dir(db_dir: Path) -> Path | None:
    version = current_version(db_dir)
    return version_dir(db_dir, version) if version else None


def save_healed(folder: Path, healed: dict[str, HealedExits], report: dict) -> None:
    """Write one version's adapters, heads and report (keys "<modality>/<parameter>")."""
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
    save_file(lora, str(folder / LORA_FILE))
    save_file(heads, str(folder / HEADS_FILE))
    (folder / HEAL_REPORT).write_text(json.dumps(report, indent=2, default=str))


def load_healed(db_dir: Path, base_model, modality: str) -> HealedExits | None:
    """The current version's healed exit path for one modality, or None."""
    version = current_version(db_dir)
    if not version:
        return None
    folder = version_dir(db_dir, version)
    report = json.loads((folder / HEAL_REPORT).read_text())
    info = report.get("modalities", {}).get(modality)
    if not info:
        return None
    exits, k0, mode = info["exits"], info["k0"], info["mode"]
    model = fresh_model(
        base_model.name, device=str(base_model.device) if base_model.device else None, weights=report.get("weights")
    )
    heads = ExitHeads(model.dim, exits)
    heads.load_state_dict(modality_tensors(folder / HEADS_FILE, modality))
    if mode == "lora":
        _load_lora(model, modality, range(k0, max(exits)), info["rank"], folder)
    heads.to(model.device).eval().requires_grad_(False)
    return HealedExits(modality, version, mode, k0, list(exits), model, heads)


def modality_tensors(path: Path, modality: str) -> dict:
    """The tensors of one modality in a version file, with the "<modality>/" prefix taken off."""
    from safetensors.torch import load_file

    prefix = modality + "/"
    return {key[len(prefix) :]: value for key, value in load_file(str(path)).items() if key.startswith(prefix)}


def _load_lora(model, modality: str, blocks: range, rank: int, folder: Path) -> None:
    """Inject adapters into `blocks` and load their trained weights, frozen.  Every injected
    adapter must be in the file: a missing one would silently run untrained."""
    root = inject_lora(model, modality, blocks, rank)
    state = modality_tensors(folder / LORA_FILE, modality)
    missing = [name for name, _ in root.named_parameters() if "lora_" in name and name not in state]
    if missing:
        raise RecallError(f"healed adapters in {folder} are incomplete; run `recall heal` again")
    root.load_state_dict(state, strict=False)
    root.requires_grad_(False)
