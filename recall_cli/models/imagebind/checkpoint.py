"""The official ImageBind checkpoint's state-dict names <-> ours: which official key becomes which
key of a Trunk in model.py, and back.

weights.py uses it once, to convert imagebind_huge.pth into per-trunk safetensors; tests and
benchmarks use the inverse to write checkpoints in the reference format.  It imports model.py (the
names and shapes it maps to) and model.py never imports it, so the architecture knows nothing of
checkpoint formats.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from recall_cli.models.imagebind.model import HUGE_CONFIG, TRUNKS, ImageBindConfig, Trunk

IGNORED_OFFICIAL = ("depth", "thermal", "imu")  # modalities a personal collection does not have

_RULES: list[tuple[str, str]] = [
    (r"modality_preprocessors\.vision\.rgbt_stem\.proj\.1\.weight", "stem.patch.weight"),
    (r"modality_preprocessors\.audio\.rgbt_stem\.proj\.weight", "stem.patch.weight"),
    (r"modality_preprocessors\.audio\.rgbt_stem\.norm_layer\.(weight|bias)", r"stem.norm.\1"),
    (r"modality_preprocessors\.(?:vision|audio)\.cls_token", "stem.cls_token"),
    (r"modality_preprocessors\.(?:vision|audio)\.pos_embedding_helper\.pos_embed", "stem.pos_embed"),
    (r"modality_preprocessors\.text\.token_embedding\.weight", "stem.token_embedding.weight"),
    (r"modality_preprocessors\.text\.pos_embed", "stem.pos_embed"),
    (r"modality_trunks\.vision\.pre_transformer_layer\.0\.(weight|bias)", r"pre_norm.\1"),
    (r"modality_trunks\.\w+\.blocks\.(\d+)\.norm_1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"modality_trunks\.\w+\.blocks\.(\d+)\.norm_2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"modality_trunks\.\w+\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"modality_trunks\.\w+\.blocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.out.\2"),
    (r"modality_trunks\.\w+\.blocks\.(\d+)\.attn\.(bias_[kv])", r"blocks.\1.attn.\2"),
    (r"modality_trunks\.\w+\.blocks\.(\d+)\.attn\.in_proj_(weight|bias)", r"blocks.\1.attn.{qkv}.\2"),
    (r"modality_heads\.(?:vision|audio)\.0\.(weight|bias)", r"head_norm.\1"),
    (r"modality_heads\.(?:vision|audio)\.2\.weight", "head_proj.weight"),
    (r"modality_heads\.text\.proj\.0\.(weight|bias)", r"head_norm.\1"),
    (r"modality_heads\.text\.proj\.1\.weight", "head_proj.weight"),
    (r"modality_postprocessors\.(?:text|audio)\.1\.log_logit_scale", "log_logit_scale"),
]
_RULES_RE = [(re.compile(p + "$"), r) for p, r in _RULES]
_DROPPED = re.compile(r"modality_preprocessors\.text\.mask$")  # the causal mask buffer (rebuilt)


def convert_official_state_dict(official: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split the official checkpoint into {"vision"|"text"|"audio": our state dict}.

    Every key is accounted for: keys of the three trunks are mapped (fused in_proj split into q/k/v
    as views, no copy), the text causal-mask buffer is dropped (we use is_causal), depth/thermal/IMU
    keys are skipped by design; anything else is an error.  Missing keys surface in
    check_trunk_state_dicts, or when the trunk is loaded with strict=True."""
    out: dict[str, dict[str, Any]] = {kind: {} for kind in TRUNKS}
    unknown = []
    for key, tensor in official.items():
        parts = key.split(".")
        kind = parts[1] if len(parts) > 1 else ""
        if kind in IGNORED_OFFICIAL or _DROPPED.match(key):
            continue
        for pattern, repl in _RULES_RE:
            if kind in TRUNKS and pattern.match(key):
                name = pattern.sub(repl, key)
                if "{qkv}" in name:
                    for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                        out[kind][name.format(qkv=part)] = chunk
                else:
                    out[kind][name] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the ImageBind checkpoint: {unknown[:5]} ({len(unknown)} in all)")
    return out


def check_trunk_state_dicts(trunks: dict[str, dict[str, Any]], config: ImageBindConfig | None = None) -> None:
    """RuntimeError unless each trunk's state dict loads strictly into our Trunk built from `config`
    (default HUGE_CONFIG): no missing, extra or misshapen key.  Done on the meta device, so it takes
    no memory and initialises nothing."""
    config = config or HUGE_CONFIG
    for kind, sd in trunks.items():
        with torch.device("meta"):
            Trunk(kind, config).load_state_dict(
                {k: torch.empty(v.shape, device="meta", dtype=v.dtype) for k, v in sd.items()}, strict=True
            )


def to_official_state_dict(trunks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Inverse of convert_official_state_dict for the three trunks (q/k/v fused back into
    in_proj; the text causal-mask buffer rebuilt).  Used to write reference-format checkpoints."""
    out: dict[str, Any] = {}
    for kind, sd in trunks.items():
        pre, trunk, head = f"modality_preprocessors.{kind}", f"modality_trunks.{kind}", f"modality_heads.{kind}"
        for name, t in sd.items():
            m = re.match(r"blocks\.(\d+)\.(.*)$", name)
            if m:
                i, rest = m.groups()
                if re.match(r"attn\.[kv]\.", rest):
                    continue
                if re.match(r"attn\.q\.", rest):
                    which = rest.split(".")[-1]
                    key = f"{trunk}.blocks.{i}.attn.in_proj_{which}"
                    out[key] = torch.cat([sd[f"blocks.{i}.attn.{p}.{which}"] for p in "qkv"])
                    continue
                rest = (
                    rest.replace("norm1.", "norm_1.")
                    .replace("norm2.", "norm_2.")
                    .replace("attn.out.", "attn.out_proj.")
                )
                out[f"{trunk}.blocks.{i}.{rest}"] = t
            elif name == "stem.patch.weight":
                out[f"{pre}.rgbt_stem.proj.1.weight" if kind == "vision" else f"{pre}.rgbt_stem.proj.weight"] = t
            elif name.startswith("stem.norm."):
                out[f"{pre}.rgbt_stem.norm_layer.{name.split('.')[-1]}"] = t
            elif name == "stem.cls_token":
                out[f"{pre}.cls_token"] = t
            elif name == "stem.pos_embed":
                out[f"{pre}.pos_embed" if kind == "text" else f"{pre}.pos_embedding_helper.pos_embed"] = t
            elif name == "stem.token_embedding.weight":
                out[f"{pre}.token_embedding.weight"] = t
            elif name.startswith("pre_norm."):
                out[f"{trunk}.pre_transformer_layer.0.{name.split('.')[-1]}"] = t
            elif name.startswith("head_norm."):
                out[(f"{head}.proj.0." if kind == "text" else f"{head}.0.") + name.split(".")[-1]] = t
            elif name == "head_proj.weight":
                out[f"{head}.proj.1.weight" if kind == "text" else f"{head}.2.weight"] = t
            elif name == "log_logit_scale":
                out[f"modality_postprocessors.{kind}.1.log_logit_scale"] = t
            else:
                raise ValueError(f"unexpected key {name}")
        if kind == "text":
            n = sd["stem.pos_embed"].shape[1]
            out[f"{pre}.mask"] = torch.full((n, n), float("-inf")).triu_(1)
    return out
