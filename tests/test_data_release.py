"""The LRA release: finding task folders in a small `lra_release.gz` (nested and top-level copies)
or an extracted folder; truncated and corrupt archives; and the download with resume and
checksum, end to end against a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from test_data_cache import modes, umask
from test_data_pathfinder import release_level  # the Pathfinder release-layout fixture

from data_prep import listops, release
from data_prep.__main__ import main
from data_prep.cache import DataError, load_split, read_manifest

ROWS = {"train": [("( ( [MAX 2 ) 9 ] )", 9), ("( ( [MIN 4 ) 7 ] )", 4), ("( [SM 3 ] )", 3)],
        "val": [("( ( [MED 1 ) 5 ] )", 3)], "test": [("( 6 )", 6), ("( [MAX 8 ] )", 8)]}


def tsv_bytes(rows) -> bytes:
    return ("Source\tTarget\n" + "".join(f"{src}\t{label}\n" for src, label in rows)).encode()


def make_archive(path, *, top_level_copy=True, extra=()) -> bytes:
    """A small lra_release.gz: ListOps under lra_release/lra_release/ and a different, stale
    top-level copy of its train file, which must lose to the nested one."""
    files = {f"lra_release/lra_release/listops-1000/basic_{split}.tsv": tsv_bytes(rows)
             for split, rows in ROWS.items()}
    if top_level_copy:
        files["lra_release/listops-1000/basic_train.tsv"] = tsv_bytes(ROWS["train"][:1])
    files.update(extra)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def check_listops_cache(out):
    manifest = read_manifest(out, task="listops")
    assert {k: v["size"] for k, v in manifest["splits"].items()} == {"train": 3, "val": 1,
                                                                     "test": 2}
    train = load_split(out, "train", manifest)
    assert train.labels.tolist() == [9, 4, 3]
    assert train.tokens[0, : train.lengths[0]].tolist() == listops.encode("( ( [MAX 2 ) 9 ] )")


def test_archive_extracts_the_nested_copy(tmp_path):
    archive = tmp_path / "lra_release.gz"
    make_archive(archive)
    with umask(0o022):
        folder = release.find(archive, "listops-1000", tmp_path / "extracted")
    assert folder == tmp_path / "extracted" / "listops-1000"
    assert modes(folder) == {"listops-1000": 0o755, **{f"listops-1000/basic_{split}.tsv": 0o644
                                                       for split in ROWS}}, "readable by others"
    assert (folder / "basic_train.tsv").read_bytes() == tsv_bytes(ROWS["train"])
    check_listops_cache(listops.build_from_release(tmp_path / "cache", folder))
    # Reused, not extracted again; no temporary folders left behind.
    assert release.find(archive, "listops-1000", tmp_path / "extracted") == folder
    assert [p.name for p in (tmp_path / "extracted").iterdir()] == ["listops-1000"]


@pytest.mark.parametrize("layout", ["lra_release/lra_release", "lra_release", ""])
def test_extracted_folder_in_any_layout(tmp_path, layout):
    folder = tmp_path / "release" / layout / "listops-1000"
    folder.mkdir(parents=True)
    for split, rows in ROWS.items():
        (folder / f"basic_{split}.tsv").write_bytes(tsv_bytes(rows))
    assert release.find(tmp_path / "release", "listops-1000") == folder
    with pytest.raises(DataError, match="tsv_data/ is not in the release folder"):
        release.find(tmp_path / "release", "tsv_data")


def test_truncated_archive_fails_and_leaves_nothing(tmp_path):
    archive = tmp_path / "lra_release.gz"
    data = make_archive(archive, extra={"lra_release/lra_release/zzz/big.bin":
                                        np.random.default_rng(0).bytes(200_000)})
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"lra_release\.gz is truncated or corrupt.*download"):
        release.find(archive, "zzz", tmp_path / "extracted")
    assert not any((tmp_path / "extracted").iterdir())


def test_archive_without_the_folder_or_not_a_tar(tmp_path):
    archive = tmp_path / "lra_release.gz"
    make_archive(archive)
    with pytest.raises(DataError, match="holds no tsv_data/"):
        release.find(archive, "tsv_data", tmp_path / "extracted")
    archive.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(DataError, match="truncated or corrupt"):
        release.find(archive, "listops-1000", tmp_path / "extracted")


def test_unsafe_member_names_are_ignored(tmp_path):
    archive = tmp_path / "lra_release.gz"
    make_archive(archive, extra={"lra_release/listops-1000/../../evil.txt": b"x"})
    release.find(archive, "listops-1000", tmp_path / "extracted")
    assert not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in (tmp_path / "extracted" / "listops-1000").iterdir()) == [
        "basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]


def test_missing_release_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="python -m data_prep download lra_release"):
        release.find(None, "listops-1000")


# ---- download --------------------------------------------------------------------------------

class Server:
    """A threaded HTTP server on 127.0.0.1 serving one payload, with Range support; it can cut
    the first response off halfway (the connection drops mid-body)."""

    def __init__(self, payload: bytes, cut_first: bool = False):
        self.payload, self.cut_first, self.ranges = payload, cut_first, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/lra_release.gz":
                    self.send_error(404)
                    return
                header = self.headers.get("Range")
                outer.ranges.append(header)
                start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
                if start >= len(outer.payload):
                    self.send_response(416)
                    self.end_headers()
                    return
                body = outer.payload[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Length", str(len(body)))
                if header:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                self.end_headers()
                if outer.cut_first and len(outer.ranges) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/lra_release.gz"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload(tmp_path):
    return make_archive(tmp_path / "source.gz", extra={
        "lra_release/lra_release/zzz/noise.bin": np.random.default_rng(1).bytes(300_000)})


def test_download_cut_halfway_then_resumed_end_to_end(tmp_path, payload):
    dest = tmp_path / "data" / "lra_release.gz"
    part = dest.with_name("lra_release.gz.part")
    digest = hashlib.sha256(payload).hexdigest()
    with Server(payload, cut_first=True) as server:
        with pytest.raises(DataError, match=r"stopped after \d+ bytes.*run the same command "
                                            r"again to resume"):
            release.download(server.url, dest, sha256=digest, retries=0, progress=False)
        assert not dest.exists() and 0 < part.stat().st_size < len(payload)
        half = part.stat().st_size
        with umask(0o022):
            release.download(server.url, dest, sha256=digest, retries=0, progress=False)
        assert server.ranges == [None, f"bytes={half}-"]
    assert dest.read_bytes() == payload and not part.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["lra_release.gz"]
    assert modes(dest.parent)["data/lra_release.gz"] == 0o644
    # The downloaded archive feeds the ListOps builder through the CLI.
    assert main(["listops", "--source", "lra_release", "--release", str(dest), "--extract-dir",
                 str(tmp_path / "extracted"), "--out", str(tmp_path / "cache")]) == 0
    check_listops_cache(tmp_path / "cache")


def test_download_resumes_by_itself_within_one_call(tmp_path, payload):
    dest = tmp_path / "lra_release.gz"
    with Server(payload, cut_first=True) as server:
        release.download(server.url, dest, retries=2, progress=False)
        assert len(server.ranges) == 2 and server.ranges[1].startswith("bytes=")
    assert dest.read_bytes() == payload


def test_bad_checksum_is_rejected(tmp_path, payload):
    dest = tmp_path / "lra_release.gz"
    with Server(payload) as server:
        with pytest.raises(DataError, match="sha256 .* does not match the expected"):
            release.download(server.url, dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not dest.with_name("lra_release.gz.part").exists()
    dest.write_bytes(b"an older, different file")
    with pytest.raises(DataError, match="exists but its sha256 is not 0000"):
        release.download("http://127.0.0.1:9/unused", dest, sha256="0" * 64, progress=False)


def test_malformed_checksum_is_rejected_before_downloading(tmp_path):
    with pytest.raises(DataError, match=r"--sha256 'abc' is not a sha256 digest"):
        release.download("http://127.0.0.1:9/unused", tmp_path / "x", sha256="abc",
                         progress=False)
    assert not any(tmp_path.iterdir())


def test_http_error_and_unreachable_host(tmp_path, payload):
    with Server(payload) as server:
        with pytest.raises(DataError, match="HTTP 404"):
            release.download(server.url + ".missing", tmp_path / "x", progress=False)
        closed = server.url  # the port is free again once the server is closed
    with pytest.raises(DataError, match="cannot download .* check the network"):
        release.download(closed, tmp_path / "y", retries=0, timeout=5, progress=False)


def test_pathfinder_level_from_the_archive_through_the_cli(tmp_path, capsys):
    level = tmp_path / "tree"
    release_level(level, n=21)  # 20 decodable images and the release's empty PNG
    files = {f"lra_release/lra_release/pathfinder32/curv_contour_length_14/"
             f"{p.relative_to(level).as_posix()}": p.read_bytes()
             for p in sorted(level.rglob("*")) if p.is_file()}
    archive = tmp_path / "lra_release.gz"
    make_archive(archive, extra=files)
    assert main(["pathfinder", "--source", "lra_release", "--release", str(archive),
                 "--extract-dir", str(tmp_path / "x"), "--out", str(tmp_path / "pf")]) == 0
    assert "wrote" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "pf", task="pathfinder")
    assert [s["size"] for s in manifest["splits"].values()] == [16, 2, 2]
    assert (tmp_path / "x" / "pathfinder32" / "curv_contour_length_14" / "metadata").is_dir()
