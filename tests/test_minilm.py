"""The minilm layered encoder: same embeddings as sentence-transformers, block by block."""

import pytest
import torch

from recall_cli.models import load_model
from recall_cli.models.minilm.light import WINDOW, default_weights_dir

SENTENCES = [
    "A red kayak on a calm lake at sunset.",
    "def fibonacci(n): return n",
    "Grandma's apple pie needs cinnamon.",
    "x " * 400,
]


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", device="cpu")


def test_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_weights_dir()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    ours = minilm.encode_texts(SENTENCES)
    cosine = torch.nn.functional.cosine_similarity(ours, expected.cpu())
    assert cosine.min() > 0.9999, cosine
    assert (ours - expected.cpu()).abs().max() < 1e-4


def test_layered_steps_compose_to_full_depth(minilm):
    with torch.inference_mode():
        batch = minilm.tokenize("text", SENTENCES[:3])
        halfway = minilm.run_blocks(batch, 0, 3)
        resumed = minilm.run_blocks(halfway, 3, minilm.depth("text"))
        layered = minilm.embed(resumed, minilm.depth("text"))
        early = minilm.embed(halfway, 3)
    assert torch.allclose(layered, minilm.encode_texts(SENTENCES[:3]), atol=1e-5)
    # an early exit is a different (worse) embedding, not the same one
    assert torch.nn.functional.cosine_similarity(early, layered).max() < 0.999


def test_long_text_is_chunked_with_overlap(minilm):
    words = [f"w{i}" for i in range(2000)]
    chunks = minilm.chunk_text(" ".join(words))
    assert len(chunks) > 2
    assert chunks[0].startswith("w0 ") and chunks[-1].endswith("w1999")
    for chunk in chunks:
        assert len(minilm.tokenizer.encode(chunk).ids) <= WINDOW
    tail_of_first = chunks[0].split()[-5:]
    assert " ".join(tail_of_first) in chunks[1]  # consecutive chunks overlap


def test_batch_padding_does_not_change_embeddings(minilm):
    alone = minilm.encode_texts([SENTENCES[0]])
    padded = minilm.encode_texts([SENTENCES[0], SENTENCES[3]])[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_light_query_encoder_gives_the_torch_encoders_vectors(minilm):
    """The numpy query encoder a cold query uses instead of importing torch: same vectors within
    float32 rounding, alone and in a padded batch, long (truncated) and non-ASCII texts included."""
    from recall_cli.models import load_query_encoder

    light = load_query_encoder("minilm")
    texts = [*SENTENCES, "naïve café in 東京 — ünïcödé", "a", ""]
    expected = minilm.encode_texts(texts).numpy()
    together = light.encode_texts(texts)
    alone = [light.encode_texts([text])[0] for text in texts]
    assert light.version == minilm.version and light.dim == minilm.dim
    assert abs(together - expected).max() < 1e-5
    assert abs(alone - expected).max() < 1e-5


def test_chunks_carry_the_ids_they_tokenise_to_and_encode_the_same(minilm):
    # chunks keep the ids of the file's own tokenisation only where that is exact (windows on word
    # boundaries); a window that starts or ends inside a word tokenises differently on its own
    words = ["antidisestablishmentarianism", "the", "photosynthesis", "lake,", "a", "red", "sunset."]
    text = " ".join(words[i % 7] + ("" if i % 11 else "ly") for i in range(1500))
    chunks = minilm.chunk_text(text)
    carried = [chunk for chunk in chunks if hasattr(chunk, "token_ids")]
    assert len(chunks) > 4 and carried and len(carried) < len(chunks)
    for chunk in carried:
        assert chunk.token_ids == minilm.tokenizer.encode(str(chunk)).ids
    with torch.inference_mode():
        kept = minilm.tokenize("text", chunks)
        again = minilm.tokenize("text", [str(chunk) for chunk in chunks])
    assert torch.equal(kept.mask, again.mask) and torch.equal(kept.hidden, again.hidden)
    assert torch.equal(minilm.encode("text", chunks), minilm.encode("text", [str(chunk) for chunk in chunks]))
