"""A batch of queries is embedded a slice at a time: the same vectors as one query at a time, in
the order given, and never one padded batch of everything (which ran out of memory on a thousand
docstring lines)."""

from __future__ import annotations

import numpy as np

from recall_cli.models import load_query_encoder
from recall_cli.query.embed import QUERY_BATCH, encode_queries


class Recording:
    """The real light MiniLM query encoder, noting how many texts each call got."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.calls: list[int] = []

    def encode_texts(self, texts):
        self.calls.append(len(texts))
        return self.encoder.encode_texts(texts)


def test_a_long_batch_of_queries_is_embedded_in_slices_with_the_vectors_of_single_queries():
    encoder = load_query_encoder("minilm", None)
    words = ["kayak", "invoice", "receipt", "lisbon", "harbour", "sunset", "install", "completions", "shell", "query"]
    texts = [" ".join(words[: 1 + i % len(words)] * (1 + i % 7)) for i in range(3 * QUERY_BATCH + 5)]
    recording = Recording(encoder)

    vectors = encode_queries(recording, texts)

    assert max(recording.calls) <= QUERY_BATCH
    assert sum(recording.calls) == len(texts)
    singles = np.stack([encoder.encode_texts([text])[0] for text in texts[:: QUERY_BATCH // 2]])
    np.testing.assert_allclose(vectors[:: QUERY_BATCH // 2], singles, atol=2e-5)
