"""recall's ImageBind against the reference ImageBind model code, same random weights.

Small configuration (TEST_CONFIG widths) for numerics of every trunk, block by block; the full Huge
configuration for key names, shapes and one forward per trunk.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from recall_cli.models import load_model
from recall_cli.models.base import LayeredEncoder
from recall_cli.models.imagebind.checkpoint import convert_official_state_dict, to_official_state_dict
from recall_cli.models.imagebind.model import HUGE_CONFIG, TEST_CONFIG, ImageBindEncoder, Trunk, build_trunk
from recall_cli.models.imagebind.tokenizer import get_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagebind_reference import reference_huge_uninitialised, reference_tokenizer, small_reference_model

ATOL = 2e-5  # max abs difference on unit-norm fp32 embeddings / hidden states (observed ~1e-6)

TEXTS = [
    "a dog barking in the park",
    "Ünïcödé & HTML &amp; entities, numbers 12345 and punctuation!!!",
    "",
    "word " * 120,  # truncated to 77 tokens
]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = small_reference_model(seed=0)
    trunks = convert_official_state_dict(ref.state_dict())
    ours = ImageBindEncoder(
        TEST_CONFIG, "imagebind-small", "test", torch.device("cpu"), torch.float32, source=lambda kind: trunks[kind]
    )
    return ref, ours


def _ref_embed(ref, modality_key, x, **kw):
    with torch.no_grad():
        return F.normalize(ref({modality_key: x})[modality_key], dim=-1)


def _capture_blocks(ref_trunk):
    """Hooks collecting the reference's input to block 0 and output of every block ([B, T, D])."""
    states, handles = [], []
    handles.append(
        ref_trunk.blocks[0].register_forward_pre_hook(
            lambda m, args, kwargs: states.append(args[0].transpose(0, 1).clone()), with_kwargs=True
        )
    )
    for blk in ref_trunk.blocks:
        handles.append(blk.register_forward_hook(lambda m, a, out: states.append(out.transpose(0, 1).clone())))
    return states, handles


def _check_blocks(ref, ours, modality, ref_key, x, data):
    states, handles = _capture_blocks(ref.modality_trunks[ref_key])
    try:
        expected = _ref_embed(ref, ref_key, x)
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode():
        batch = ours.tokenize(modality, data)
        assert (batch.hidden - states[0]).abs().max() < ATOL, "tokens entering block 0"
        hidden = batch.hidden
        for i in range(ours.depth(modality)):
            hidden = ours.block(modality, i, hidden, batch.mask)
            assert (hidden - states[i + 1]).abs().max() < ATOL, f"after block {i}"
        got = ours.embed(batch.with_hidden(hidden), ours.depth(modality))
    diff = (got - expected).abs().max().item()
    cos = F.cosine_similarity(got, expected).min().item()
    assert diff < ATOL and cos > 1 - 1e-6, (diff, cos)
    return diff


def test_every_trunk_key_is_used(pair):
    ref, ours = pair
    official = ref.state_dict()
    converted = convert_official_state_dict(official)
    kept = [k for k in official if k.split(".")[1] in ("vision", "text", "audio")]
    in_proj = [k for k in kept if ".in_proj_" in k]
    assert sum(len(v) for v in converted.values()) == len(kept) - 1 + 2 * len(in_proj)  # -1: text mask
    for kind in ("vision", "text", "audio"):
        ours.trunk(kind)  # strict load already happened; check nothing is left on meta
        assert all(p.device.type == "cpu" for p in ours.trunk(kind).state_dict().values())
    back = to_official_state_dict(converted)  # round trip (used to write reference checkpoints)
    expected = {k: v for k, v in official.items() if k.split(".")[1] in ("vision", "text", "audio")}
    assert set(back) == set(expected) and all(torch.equal(back[k], expected[k]) for k in expected)
    with pytest.raises(ValueError):
        convert_official_state_dict({**official, "modality_trunks.vision.extra.weight": torch.zeros(1)})
    bad = dict(converted["text"])
    bad.pop("blocks.0.attn.q.weight")
    with pytest.raises(RuntimeError):
        build_trunk("text", TEST_CONFIG, bad)


def test_attention_is_lora_targetable(pair):
    _, ours = pair
    attn = ours.trunk("image").blocks[0].attn
    assert all(isinstance(getattr(attn, n), torch.nn.Linear) for n in ("q", "k", "v", "out"))


def test_image_parity(pair):
    ref, ours = pair
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    _check_blocks(ref, ours, "image", "vision", x, list(x))


def test_video_parity(pair):
    ref, ours = pair
    x = torch.randn(2, 3, 3, 2, 224, 224, generator=torch.Generator().manual_seed(2))  # 2 videos x 3 clips
    _check_blocks(ref, ours, "video", "vision", x, list(x))


def test_audio_parity(pair):
    ref, ours = pair
    x = torch.randn(2, 3, 1, 128, 204, generator=torch.Generator().manual_seed(3))  # 2 files x 3 clips
    _check_blocks(ref, ours, "audio", "audio", x, list(x))


def test_text_tokenizer_and_parity(pair):
    ref, ours = pair
    ref_tok = reference_tokenizer()
    expected_ids = torch.stack([ref_tok(t) for t in TEXTS])
    ids = get_tokenizer()(TEXTS)
    assert torch.equal(ids, expected_ids)
    assert torch.equal(torch.stack([ours.text_unit(t).data for t in TEXTS]), expected_ids)
    _check_blocks(ref, ours, "text", "text", expected_ids, [ours.text_unit(t).data for t in TEXTS])
    # strings are accepted too
    with torch.inference_mode():
        a = ours.encode("text", TEXTS[:2])
        b = ours.encode_texts(TEXTS[:2])
    assert torch.allclose(a, b)


def test_early_exit_head_matches_reference_head(pair):
    """head() after L < depth blocks = the reference's head + postprocessor on the same state."""
    ref, ours = pair
    x = torch.randn(2, 1, 128, 204, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        batch = ours.tokenize("audio", list(x[:, None]))
        hidden = ours.block("audio", 0, batch.hidden, batch.mask)
        got = ours.head("audio", hidden, batch.mask, 1)
        expected = F.normalize(ref.modality_postprocessors["audio"](ref.modality_heads["audio"](hidden)), dim=-1)
        ids = torch.stack([ours.text_unit(t).data for t in TEXTS[:2]])
        tb = ours.tokenize("text", list(ids))
        th = ours.block("text", 0, tb.hidden, tb.mask)
        got_t = ours.head("text", th, tb.mask, 1)
        exp_t = ref.modality_heads["text"](th, seq_len=ids.argmax(-1))
        exp_t = F.normalize(ref.modality_postprocessors["text"](exp_t), dim=-1)
    assert (got - expected).abs().max() < ATOL
    assert (got_t - exp_t).abs().max() < ATOL


def test_bf16_close_to_fp32(pair):
    ref, ours = pair
    trunks = convert_official_state_dict(ref.state_dict())
    half = ImageBindEncoder(TEST_CONFIG, "x", "x", torch.device("cpu"), torch.bfloat16, source=lambda k: trunks[k])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    cos = F.cosine_similarity(half.encode("image", list(x)), ours.encode("image", list(x))).min()
    assert cos > 0.99


def test_imagebind_test_model_is_fast_and_deterministic():
    start = time.perf_counter()
    model = load_model("imagebind-test", device="cpu")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    emb = model.encode("image", list(x))
    elapsed = time.perf_counter() - start
    assert isinstance(model, LayeredEncoder) and model.version == "imagebind-test@seed0"
    assert emb.shape == (1, 64) and model.dim == 64
    assert elapsed < 1.0, elapsed
    again = load_model("imagebind-test", device="cpu").encode("image", list(x))
    assert torch.equal(emb, again)
    t = model.encode_texts(["a cat", "a dog"])
    assert torch.allclose(t.norm(dim=-1), torch.ones(2))
    assert model.suggest_batch_size("image", available_bytes=1 << 30) >= 1


def _random_official(shapes: dict, wanted: tuple[str, ...], seed: int = 0) -> dict:
    """Random tensors for the keys of the wanted modalities, meta tensors for the rest."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in shapes.items():
        modality = key.split(".")[1]
        if modality not in wanted:
            out[key] = torch.empty(shape, dtype=dtype, device="meta")
        elif key.endswith("text.mask"):
            out[key] = torch.full(shape, float("-inf")).triu_(1)
        elif key.endswith("log_logit_scale"):
            out[key] = torch.tensor(math.log(20.0))
        elif key.endswith("bias") or "norm" in key or key.startswith("modality_heads") and len(shape) == 1:
            out[key] = (1.0 if key.endswith("weight") else 0.0) + 0.02 * torch.randn(shape, generator=gen)
        else:
            out[key] = 0.02 * torch.randn(shape, generator=gen)
    return out


def test_huge_configuration_against_reference():
    """Huge: identical key set and shapes (reference built on the meta device, no memory), then one
    forward per trunk with the same random weights in both implementations."""
    ref = reference_huge_uninitialised()
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in ref.state_dict().items()}
    converted = convert_official_state_dict({k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in shapes.items()})
    counts = {}
    for kind, sd in converted.items():
        with torch.device("meta"):
            trunk = Trunk(kind, HUGE_CONFIG)
        ours_shapes = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
        assert ours_shapes == {k: tuple(v.shape) for k, v in sd.items()}
        counts[kind] = sum(math.prod(s) for k, s in ours_shapes.items() if k.startswith(("blocks.", "pre_norm.")))
    # transformer-trunk parameter counts from PLATFORM-NOTES (random-weight reference model)
    assert abs(counts["vision"] / 1e6 - 629.7) < 1.0 and abs(counts["text"] / 1e6 - 302.3) < 1.0
    assert abs(counts["audio"] / 1e6 - 85.1) < 1.0

    weights = _random_official(shapes, ("vision", "text", "audio"))
    ref.load_state_dict(weights, strict=True, assign=True)
    ref.eval()
    trunks = convert_official_state_dict(weights)
    ours = ImageBindEncoder(
        HUGE_CONFIG, "imagebind-huge", "test", torch.device("cpu"), torch.float32, source=lambda kind: trunks[kind]
    )
    gen = torch.Generator().manual_seed(7)
    image = torch.randn(1, 3, 224, 224, generator=gen)
    audio = torch.randn(1, 1, 1, 128, 204, generator=gen)
    ids = get_tokenizer()(["a photo of a red kayak"])
    with torch.inference_mode():
        for key, x, modality, data in (
            ("vision", image, "image", list(image)),
            ("audio", audio, "audio", list(audio)),
            ("text", ids, "text", list(ids)),
        ):
            expected = F.normalize(ref({key: x})[key], dim=-1)
            got = ours.encode(modality, data)
            assert got.shape == (1, 1024)
            assert (got - expected).abs().max() < 1e-4, key
