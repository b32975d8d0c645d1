"""fetch: the reference layout from a local mirror over HTTP (sha256 checks, resuming an interrupted
file, a wrong checksum refused and removed) and from a local folder."""
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apot_utils.files import checkpoints, downloads, fetch
from apot_utils.cli import main


class _RangeHandler(SimpleHTTPRequestHandler):
    """Serves a folder; honours "Range: bytes=N-"; ``cut`` (shared set of paths) sends only half of
    such a file, once, and drops the connection: an interrupted download."""
    cut: set = set()
    ranges: list = []

    def do_GET(self):
        path = self.translate_path(self.path)
        try:
            body = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.ranges.append((self.path, start))
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in self.cut:
            self.cut.discard(self.path)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(ref):
    root = ref("checkpoints/cifar10/res20_2bit.pth.tar").parents[2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_resumes_an_interrupted_file_and_refuses_a_wrong_checksum(mirror, tmp_path):
    root, url = mirror
    entry = checkpoints.RELEASED[("cifar10", "resnet20", 3)]
    dest = tmp_path / "out" / entry.filename
    _RangeHandler.cut, _RangeHandler.ranges = {"/checkpoints/cifar10/res20_3bit.pth.tar"}, []
    with pytest.raises(Exception):
        downloads.download_verified(f"{url}/checkpoints/cifar10/res20_3bit.pth.tar", dest, entry.sha256)
    part = dest.with_name(dest.name + ".part")
    assert not dest.exists() and 0 < part.stat().st_size < (root / "checkpoints/cifar10/res20_3bit.pth.tar").stat().st_size
    half = part.stat().st_size
    downloads.download_verified(f"{url}/checkpoints/cifar10/res20_3bit.pth.tar", dest, entry.sha256)
    assert _RangeHandler.ranges == [("/checkpoints/cifar10/res20_3bit.pth.tar", half)]   # resumed, not restarted
    assert downloads.sha256_of(dest) == entry.sha256 and not part.exists()
    other = tmp_path / "out" / "wrong.pth.tar"
    with pytest.raises(checkpoints.CheckpointError, match="does not match sha256"):
        downloads.download_verified(f"{url}/checkpoints/cifar10/res20_3bit.pth.tar", other, "0" * 64)
    assert not other.exists() and not other.with_name(other.name + ".part").exists()


def test_fetch_from_a_mirror_then_from_a_folder(mirror, tmp_path, monkeypatch, capsys):
    root, url = mirror
    public = [fetch.PublicFile(f.relative, f"{url}/{f.relative}", f.sha256) for f in fetch.PUBLIC_FILES]
    monkeypatch.setattr(fetch, "PUBLIC_FILES", public)
    monkeypatch.setattr(fetch, "_exact_test_images", lambda dest, source, log: None)   # torchvision: online only
    dest = tmp_path / "reference"
    fetch.fetch(dest, log=lambda line: None)
    for f in public:
        assert downloads.sha256_of(dest / f.relative) == f.sha256
    lines = []
    fetch.fetch(dest, log=lines.append)                                          # a second run keeps what is right
    assert all(line.startswith(("ok", "missing", "=>")) for line in lines)
    monkeypatch.undo()
    assert main(["fetch", "--dest", str(tmp_path / "copy"), "--from", str(root)]) == 0
    out = capsys.readouterr().out
    assert "wrote   cifar10/test_first1000_lossless.npz" in out and f"APOT_DATA_DIR={(tmp_path / 'copy').resolve()}" in out
    assert fetch.images_digest(tmp_path / "copy/cifar10/test_first1000_lossless.npz") == fetch.EXACT_TEST_DIGESTS[1000]


def test_fetch_refuses_a_wrong_local_file(ref, tmp_path, capsys):
    source = tmp_path / "source"
    (source / "checkpoints/cifar10").mkdir(parents=True)
    (source / "checkpoints/cifar10/res20_2bit.pth.tar").write_bytes(b"not the checkpoint")
    assert main(["fetch", "--dest", str(tmp_path / "dest"), "--from", str(source)]) == 2
    assert "checksum differs" in capsys.readouterr().err
    assert not (tmp_path / "dest/checkpoints/cifar10/res20_2bit.pth.tar").exists()
