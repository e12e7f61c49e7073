"""INT4 activation cache: quantisation error bounds, nibble packing, the blob format."""

import pytest
import torch

from recall_cli.early_exit import quant


@pytest.fixture(scope="module")
def minilm():
    from recall_cli.models import load_model

    return load_model("minilm", "cpu")


def test_codes_pack_two_per_byte_and_round_trip_exactly_on_the_grid():
    # values on the quantisation grid of their group come back exactly
    group = torch.arange(32, dtype=torch.float32) % 16  # 0..15 twice: low 0, scale 1
    codes, scales, lows = quant.quantize(group[None], 32)
    assert codes.shape == (1, 16) and str(codes.dtype) == "uint8"
    assert int(codes[0, 0]) == 0x10 and int(codes[0, 1]) == 0x32  # even channel in the low nibble
    assert torch.equal(quant.dequantize(codes, scales, lows, 32, 32), group[None])


@pytest.mark.parametrize("group", [16, 32, 64])
def test_error_is_within_half_a_step_of_each_group(group):
    torch.manual_seed(0)
    x = torch.randn(50, 384) * 3 + torch.randn(384)  # per-channel offsets, like real hidden states
    codes, scales, lows = quant.quantize(x, group)
    x_hat = quant.dequantize(codes, scales, lows, 384, group)
    step = torch.from_numpy(scales.astype("float32")).repeat_interleave(group, dim=-1)
    # half a step from rounding, plus the fp16 rounding of `low` and the top of the range
    assert ((x - x_hat).abs() <= step / 2 + 2e-3 * x.abs().amax()).all()
    assert quant.relative_error(x, x_hat) < {16: 0.08, 32: 0.1, 64: 0.12}[group]


def test_blob_round_trip_with_several_sequences_of_different_lengths():
    torch.manual_seed(1)
    sequences = [torch.randn(length, 40) for length in (7, 1, 19)]  # D not a multiple of the group
    blob = quant.encode_blob(sequences, 3)
    info = quant.blob_info(blob)
    assert info["version"] == 2 and info["block"] == 3 and info["group"] == quant.GROUP_SIZE and info["dim"] == 40
    assert info["lengths"] == [7, 1, 19] and info["dtype"] == "float32" and info["bytes"] == len(blob)
    decoded = quant.decode_blob(blob)
    assert [tuple(seq.shape) for seq in decoded] == [(7, 40), (1, 40), (19, 40)]
    for exact, approx in zip(sequences, decoded, strict=True):
        assert quant.relative_error(exact, approx) < 0.12
    # 0.5 byte per value + two fp16 per group, plus a small header
    values = 27 * 64  # 40 channels padded to two groups of 32
    assert len(blob) < values * 0.5 + 27 * 2 * 4 + 64


def test_blob_keeps_dtype_and_rejects_foreign_or_truncated_data():
    blob = quant.encode_blob([torch.randn(5, 64).to(torch.bfloat16)], 1)
    assert quant.decode_blob(blob)[0].dtype == torch.bfloat16
    assert quant.decode_blob(blob, dtype=torch.float32)[0].dtype == torch.float32
    with pytest.raises(quant.CacheFormatError):
        quant.blob_info(b"XXXX" + blob[4:])
    with pytest.raises(quant.CacheFormatError):
        quant.decode_blob(blob[:-1])


def test_real_hidden_state_round_trip_error_and_resumed_embedding(minilm):
    from recall_cli.early_exit.encode import encode_with_exits, resume
    from recall_cli.early_exit.policy import FixedPolicy

    texts = [
        "Return the n-th Fibonacci number computed recursively.",
        "Paddling the red kayak across the lake at sunset, the water was calm and clear.",
        "Train timetable from Berlin to Munich.",
    ]
    out = encode_with_exits(minilm, "text", texts, FixedPolicy(3))
    exact_states = out.states
    blobs = [quant.encode_blob(states, 3) for states in exact_states]
    decoded = [quant.decode_blob(blob) for blob in blobs]
    for states, approx in zip(exact_states, decoded, strict=True):
        assert quant.relative_error(states[0], approx[0]) < 0.1  # measured ~0.09 at group 32
    exact = resume(minilm, "text", exact_states, out.exits)
    approx = resume(minilm, "text", decoded, out.exits)
    full = minilm.encode("text", texts)
    assert torch.allclose(exact, full, atol=1e-5)  # resuming the exact state is full depth
    assert float((approx * exact).sum(-1).min()) > 0.99  # measured >= 0.997


@pytest.mark.parametrize("part_tokens", [4096, 2])  # in one thread, and split across threads
def test_blobs_packed_for_a_whole_batch_decode_to_each_items_own_state(monkeypatch, part_tokens):
    # one quantisation over every item's tokens must still give each item its own tokens, lengths,
    # dtype and block: a wrong offset would hand one item another item's hidden state
    monkeypatch.setattr(quant, "PART_TOKENS", part_tokens)
    torch.manual_seed(2)
    items = [
        ([torch.randn(5, 40) * 3], 2),
        ([torch.randn(3, 40) + 10, torch.randn(8, 40) - 10], 3),
        ([torch.randn(1, 40).to(torch.bfloat16)], 4),
    ]
    blobs = quant.encode_blobs(items)
    assert blobs == [quant.encode_blob(sequences, block) for sequences, block in items]
    for (sequences, block), blob in zip(items, blobs, strict=True):
        info = quant.blob_info(blob)
        assert info["block"] == block and info["lengths"] == [len(seq) for seq in sequences]
        assert info["dtype"] == str(sequences[0].dtype).replace("torch.", "")
        for exact, approx in zip(sequences, quant.decode_blob(blob, dtype=torch.float32), strict=True):
            assert quant.relative_error(exact.float(), approx) < 0.12
    assert quant.encode_blobs([]) == []
    with pytest.raises(ValueError):
        quant.encode_blobs([([], 1)])
