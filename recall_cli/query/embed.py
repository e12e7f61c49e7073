"""Query texts into vectors, with any query encoder (the light numpy one or the torch model).

A batch of queries (`recall query -` reading many lines) is encoded a slice at a time, the texts
of similar length together: one padded batch of every query would hold attention scores of
queries x heads x longest^2 floats, which for a thousand docstring lines was more than 15 GiB, and
each short query would pay for the longest one's padding."""

from __future__ import annotations

import numpy as np

QUERY_BATCH = 32  # texts encoded together: the padding and attention memory of one slice stay small
ONE_THREAD_UP_TO = 8  # a few short texts run on one thread: as fast as two, never stalled by a busy core


def encode_queries(model, texts: list[str]) -> np.ndarray:
    """[len(texts), dim] float32 unit vectors, in the order of `texts`."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a slice
    vectors: list = [None] * len(texts)
    for start in range(0, len(order), QUERY_BATCH):
        chosen = order[start : start + QUERY_BATCH]
        for i, vector in zip(chosen, _encode_slice(model, [texts[i] for i in chosen]), strict=True):
            vectors[i] = vector
    return np.stack(vectors).astype(np.float32, copy=False)


def _encode_slice(model, texts: list[str]) -> np.ndarray:
    """One slice, on one CPU thread when it is only a few texts, so that a query's numbers are the
    same warm (watch, server) and cold.  A light query encoder (numpy) returns its array as it is."""
    if not hasattr(model, "encode"):
        return model.encode_texts(texts)
    if len(texts) > ONE_THREAD_UP_TO:
        return model.encode_texts(texts).cpu().numpy()
    from recall_cli.models.device import one_torch_thread

    with one_torch_thread():
        return model.encode_texts(texts).cpu().numpy()
