"""Weights: resumable checksummed download (against a local HTTP server on 127.0.0.1 only),
conversion of a reference-format checkpoint to per-trunk safetensors, mmap loading, and the
no-weights error."""

from __future__ import annotations

import hashlib
import http.server
import socket
import sys
import threading
from pathlib import Path

import pytest
import torch

from recall_cli.errors import RecallError
from recall_cli.models.imagebind import weights
from recall_cli.models.imagebind.checkpoint import convert_official_state_dict
from recall_cli.models.imagebind.model import TEST_CONFIG, ImageBindEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagebind_reference import small_reference_model


class _Server:
    """Serves `payload` at /file with HTTP Range support; `cut_after` bytes makes the next response
    stop early (the connection is closed mid-body)."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after: int | None = None
        self.ranges: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                data, status = server.payload, 200
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    data, status = data[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(data[: server.cut_after])
                    server.cut_after = None
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB, several read chunks
    s = _Server(payload)
    yield s
    s.close()


def test_download_checksum_pass(server, tmp_path):
    sha = hashlib.sha256(server.payload).hexdigest()
    got = weights.download(server.url, tmp_path / "w.pth", sha, progress=True)
    assert got == sha
    assert (tmp_path / "w.pth").read_bytes() == server.payload
    assert not (tmp_path / "w.pth.part").exists()


def test_download_checksum_fail(server, tmp_path):
    with pytest.raises(RecallError, match="checksum mismatch"):
        weights.download(server.url, tmp_path / "w.pth", "0" * 64, progress=False)
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.pth.part").exists()


def test_download_interrupted_then_resumed(server, tmp_path):
    sha = hashlib.sha256(server.payload).hexdigest()
    server.cut_after = 1_000_000
    with pytest.raises(RecallError, match="resume"):
        weights.download(server.url, tmp_path / "w.pth", sha, progress=False)
    part = tmp_path / "w.pth.part"
    assert 0 < part.stat().st_size < len(server.payload)
    have = part.stat().st_size
    assert weights.download(server.url, tmp_path / "w.pth", sha, progress=False) == sha
    assert server.ranges == [None, f"bytes={have}-"]
    assert (tmp_path / "w.pth").read_bytes() == server.payload


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/imagebind_huge.pth"


def test_no_network_no_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(weights.URL_ENV, _closed_port_url())
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    with pytest.raises(RecallError) as info:
        weights.imagebind_trunk_files(progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "cache" / "imagebind_huge.pth") in message
    assert "--model minilm" in message and "--weights" in message
    with pytest.raises(RecallError, match="not found"):
        weights.imagebind_trunk_files(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A checkpoint in the official format (reference model's state_dict, TEST_CONFIG widths)."""
    path = tmp_path_factory.mktemp("ckpt") / "imagebind_small.pth"
    model = small_reference_model(seed=3)
    torch.save(model.state_dict(), path)
    return path, model


def test_safetensors_roundtrip_is_standard_and_mmapped(tmp_path):
    from safetensors import safe_open

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, 2).to(torch.bfloat16)}
    weights.save_safetensors(tensors, tmp_path / "t.safetensors", {"k": "v"})
    loaded = weights.load_safetensors_mmap(tmp_path / "t.safetensors")
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:  # the official reader agrees
        assert f.metadata() == {"k": "v"}
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t) and torch.equal(loaded[name], t)


def test_convert_and_load_matches_reference(small_checkpoint, tmp_path):
    path, model = small_checkpoint
    out = tmp_path / "converted"
    manifest = weights.convert_checkpoint(path, out, config=TEST_CONFIG)
    assert manifest["source_sha256"] == weights.sha256_file(path)
    for kind in ("vision", "text", "audio"):
        assert (out / f"{kind}.safetensors").exists()
    from recall_cli.models.imagebind.factory import load_imagebind_test

    from_files = load_imagebind_test(device="cpu", weights=out)
    trunks = convert_official_state_dict(model.state_dict())
    direct = ImageBindEncoder(TEST_CONFIG, "x", "x", torch.device("cpu"), torch.float32, source=lambda k: trunks[k])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(from_files.encode("image", list(x)), direct.encode("image", list(x)), atol=1e-6)
    assert set(from_files._trunks) == {"vision"}  # only the trunk that was used got loaded
    assert torch.allclose(from_files.encode_texts(["hi"]), direct.encode_texts(["hi"]), atol=1e-6)
    # not an ImageBind checkpoint
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(RecallError, match="not an ImageBind"):
        weights.convert_checkpoint(tmp_path / "bad.pth", tmp_path / "bad", config=TEST_CONFIG)


def test_first_use_downloads_converts_and_caches(small_checkpoint, tmp_path, monkeypatch):
    path, _ = small_checkpoint
    srv = _Server(path.read_bytes())
    try:
        sha = hashlib.sha256(srv.payload).hexdigest()
        monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
        monkeypatch.setenv(weights.URL_ENV, srv.url)
        monkeypatch.setenv(weights.SHA256_ENV, sha)
        monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
        files, version = weights.imagebind_trunk_files(progress=False, config=TEST_CONFIG)
        assert version == "official"  # matches the pinned (here: env-overridden) checksum
        assert set(files) == {"vision", "text", "audio"} and all(p.exists() for p in files.values())
        assert not (tmp_path / "cache" / "imagebind_huge.pth").exists()  # deleted after conversion
        assert weights.imagebind_trunk_files(progress=False, config=TEST_CONFIG) == (files, version)
        assert len(srv.ranges) == 1  # the second call used the cache
        # a wrong pin refuses the download
        monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache2"))
        monkeypatch.setenv(weights.SHA256_ENV, "f" * 64)
        with pytest.raises(RecallError, match="checksum mismatch"):
            weights.imagebind_trunk_files(progress=False, config=TEST_CONFIG)
        # --weights PATH / env var: converted once into the cache, keyed by the file
        monkeypatch.delenv(weights.SHA256_ENV)
        monkeypatch.setenv(weights.WEIGHTS_ENV, str(path))
        files2, version2 = weights.imagebind_trunk_files(config=TEST_CONFIG)
        assert version2 == f"sha256-{sha[:12]}"
        assert files2["text"].parent.parent == tmp_path / "cache2"
    finally:
        srv.close()
