"""Encoding overlapped with the rest of an index run: a bounded queue of one batch.

The run's own thread hashes, sniffs and decodes files (media text and OCR included) into a batch
of units; when the batch is full it goes to one encoder thread, and the run's thread goes on to
commit the batch encoded before it (LanceDB first, manifest second) and to decode the next files.
So decoding and writes happen while the model runs instead of between its batches.

Why this shape:
* every write to the table and the manifest stays in the run's thread, in batch order, table
  before manifest: what is committed is as consistent as without the overlap, and a kill loses at
  most the batch in flight and the one being gathered (two batches instead of one);
* the queue holds one batch: a slow decode (a long OCR, a large video) delays the next batch by
  at most the time the encoder would have waited anyway, and memory stays at two batches;
* torch runs in the encoder thread only (the model's own intra-op threads); the run's thread is
  mostly file reads, Rust tokenisers, numpy and LanceDB, which release the interpreter lock, so
  it can fill the gaps torch leaves (the interpreter's time between ops).  Measured on 2 cores it
  competed with torch as much as it filled them, so it is off by default (`overlap_enabled` has
  the figures); `RECALL_OVERLAP=1` turns it on.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

OVERLAP_ENV = "RECALL_OVERLAP"


def overlap_enabled() -> bool:
    """Off unless RECALL_OVERLAP=1.  Measured quiet on 2 cores (bench_speed, arms alternated, two
    runs), the overlap showed no consistent gain: MiniLM full depth 6.1 s overlapped against 5.1 s
    in series, then 5.9 s against 5.7 s; fixed:3 3.9 s against 3.8 s, then 3.9 s against 4.15 s;
    ImageBind-Huge 2.06 s against 2.06 s, then 2.04 s against 2.27 s.  On two cores the run's thread
    (and LanceDB's and the tokeniser's own threads) competes with torch's intra-op threads as
    much as it fills their gaps, and the overlap costs a kill one more uncommitted batch."""
    return os.environ.get(OVERLAP_ENV, "0").strip() in ("1", "true", "yes", "on")


@dataclass
class PendingBatch:
    """Units decoded and waiting to be encoded, with the files they come from."""

    units: list = field(default_factory=list)  # (path, Unit)
    files: dict = field(default_factory=dict)  # path -> (FileEntry, hash, modality, is_new)
    text_only: bool = True  # every unit's data is text (no decoded media): a larger batch is cheap


@dataclass
class EncodedBatch:
    batch: PendingBatch
    encoded: list  # pipeline.Encoded per unit, in order
    seconds: float  # wall time of the encode


def encode_now(batch: PendingBatch, encode: Callable[[list], list]) -> EncodedBatch:
    started = time.perf_counter()
    encoded = encode([unit for _, unit in batch.units])
    return EncodedBatch(batch, encoded, time.perf_counter() - started)


class EncoderThread:
    """One batch encoding in the background at a time (`start`, then `result`).  The thread is a
    daemon: an interrupted run exits without waiting for the batch in flight, which was never
    committed, so the next run simply encodes it again."""

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._results: queue.Queue = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self.in_flight = False

    def start(self, batch: PendingBatch, encode: Callable[[list], list]) -> None:
        if self.in_flight:
            raise RuntimeError("a batch is already encoding")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="recall-encoder", daemon=True)
            self._thread.start()
        self.in_flight = True
        self._jobs.put((batch, encode))

    def result(self) -> EncodedBatch | None:
        """The batch in flight, once encoded (None when there is none); its error, if it raised."""
        if not self.in_flight:
            return None
        done, error = self._results.get()
        self.in_flight = False
        if error is not None:
            raise error
        return done

    def close(self, wait: bool = True) -> None:
        """Stop the thread.  `wait`: first let the batch in flight finish (its result is dropped:
        it was never committed), so that a long-lived caller (`recall watch`) never has two
        encodes at once; an interrupt does not wait."""
        if self.in_flight and wait:
            self._results.get()
        self.in_flight = False
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._results.put((encode_now(*job), None))
            except BaseException as error:  # handed to the run's thread, which raises it
                self._results.put((None, error))
