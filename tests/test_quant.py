"""INT4 activation cache: quantisation error bounds, nibble packing, the blob format."""

import numpy as np
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


def test_blobs_packed_for_a_whole_batch_decode_to_each_items_own_state():
    # one quantisation over every item's tokens must still give each item its own tokens, lengths,
    # dtype and block: a wrong offset would hand one item another item's hidden state
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


def _reference_quantize(x: np.ndarray, group: int):
    """The module docstring's formula, step by step in numpy (float32, fp16 scale and low)."""
    dim = x.shape[-1]
    groups = -(-dim // group)
    x = np.concatenate([x, np.zeros((len(x), groups * group - dim), np.float32)], axis=-1)
    g = x.reshape(len(x), groups, group)
    low16 = g.min(-1).astype(np.float16)
    scale16 = ((g.max(-1) - low16.astype(np.float32)) / 15).astype(np.float16)
    scale16 = np.where(scale16 == 0, np.float16(1), scale16)
    inverse = np.float32(1) / scale16.astype(np.float32)
    q = np.clip(np.rint((g - low16.astype(np.float32)[..., None]) * inverse[..., None]), 0, 15).astype(np.uint8)
    q = q.reshape(len(x), -1, 2)
    return (q[..., 1] << 4) | q[..., 0], scale16, low16


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 384), (300, 384), (7, 40), (5, 1280)])
def test_quantisation_gives_the_bytes_of_the_documented_formula(dtype, shape, fused, monkeypatch):
    # both paths (FBGEMM's fused kernel, and torch ops where a torch lacks it) must store exactly
    # what the format promises: a blob written by one version of recall is read back the same by another
    monkeypatch.setattr(quant, "FUSED_KERNEL", fused)
    torch.manual_seed(shape[0])
    x = (torch.randn(*shape) * 4 + 1).to(dtype)
    x[0, :8] = 0.5  # a constant run inside a group: scale 0
    codes, scales, lows = quant.quantize(x, 32)
    expected = _reference_quantize(x.float().numpy(), 32)
    assert codes.dtype == np.uint8 and scales.dtype == np.float16 and lows.dtype == np.float16
    for got, want in zip((codes, scales, lows), expected, strict=True):
        assert np.array_equal(got.view(np.uint8), np.asarray(want).view(np.uint8))


def test_states_lying_in_one_tensor_pack_like_separate_copies():
    # the states of one capture are views of one tensor and are read in place: the blobs must be
    # those of separate copies, whether the views follow one another or not (order, gaps, reuse)
    torch.manual_seed(3)
    x = (torch.randn(30, 40) * 2).to(torch.bfloat16)
    for layout in ([(0, 5), (5, 12), (12, 30)], [(12, 30), (0, 5)], [(0, 5), (6, 12)], [(0, 5), (0, 5)]):
        views = [([x[a:b]], 1) for a, b in layout]
        copies = [([x[a:b].clone()], 1) for a, b in layout]
        assert quant.encode_blobs(views) == quant.encode_blobs(copies)
    split = [([part], 2) for part in torch.split(x, [4, 0, 26])]
    assert quant.encode_blobs(split) == quant.encode_blobs([([part.clone()], 2) for [part], _ in split])


def test_quantisation_leaves_torch_thread_count_and_input_alone():
    x = torch.randn(64, 384)
    before, threads = x.clone(), torch.get_num_threads()
    quant.encode_blobs([([x[:10], x[10:]], 2)])
    assert torch.equal(x, before) and torch.get_num_threads() == threads
    array = np.random.default_rng(0).normal(size=(16, 40)).astype(np.float32)  # padded to 64 channels
    kept = array.copy()
    quant.quantize(array)
    quant.quantize(array[:, :32])
    assert np.array_equal(array, kept)
