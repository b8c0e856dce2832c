"""The LRA release: find a task's folder in `lra_release.gz` or an extracted copy, and download
files with resume and a checksum.

The archive is a gzipped tar whose files sit under `lra_release/lra_release/`, with some copies
at `lra_release/` or the top level too. A folder is searched in that order. From the archive, the
members under one task's folder are streamed out (the nested copy wins over the others) into
`extract_dir/<folder>` through `atomic.atomic_dir`, so an interrupted extraction leaves
nothing behind, a finished one is reused, and other users can read it (umask permissions).

Downloads go to `<dest>.part` (flushed to disk after every request) and resume from its size with
an HTTP Range request; the file is moved to `<dest>` atomically (`atomic.atomic_write`) only
when complete and, if a sha256 is given, matching it.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from .atomic import atomic_dir, atomic_write
from .cache import DataError, file_sha256

log = logging.getLogger(__name__)

LRA_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
DEFAULT_ARCHIVE = Path("data/lra_release.gz")
DEFAULT_FOLDER = Path("data/lra_release")  # an extracted copy, and where we extract to
# Where a task folder may sit inside the release, most preferred first.
PREFIXES = ("lra_release/lra_release", "lra_release", "")

# Failures of the local file, not of the network: retrying or resuming cannot help.
LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def download_command(what: str = "lra_release") -> str:
    return f"python -m data_prep download {what}"


def locate(root: str | Path, folder: str) -> Path:
    """The path of `folder` (e.g. `listops-1000`) inside an extracted release at `root`."""
    root = Path(root)
    candidates = [root / prefix / folder for prefix in PREFIXES]
    for path in candidates:
        if path.is_dir():
            return path
    raise DataError(f"{folder}/ is not in the release folder {root} (looked for "
                    f"{', '.join(str(p) for p in candidates)}); pass the folder that holds "
                    f"lra_release/ with --release, or the archive itself")


def _release_path(name: str) -> tuple[int, str] | None:
    """(preference, path below the release root) of an archive member name, or None if unsafe."""
    parts = PurePosixPath(name).parts  # "./a/b" -> ("a", "b")
    if not parts or parts[0] == "/" or ".." in parts:
        return None
    for rank, prefix in enumerate(PREFIXES):
        head = PurePosixPath(prefix).parts
        if tuple(parts[:len(head)]) == head:
            return rank, "/".join(parts[len(head):])
    return None


def extract(archive: str | Path, folder: str, extract_dir: str | Path = DEFAULT_FOLDER) -> Path:
    """Stream `archive` once and write the files under `folder` to `extract_dir/folder`."""
    archive, target = Path(archive), Path(extract_dir) / folder
    if target.is_dir():
        log.info("using %s, extracted earlier from %s", target, archive)
        return target
    ranks: dict[str, int] = {}
    log.info("extracting %s/ from %s (one pass over the archive) ...", folder, archive)
    try:
        with atomic_dir(target) as tmp, tarfile.open(archive, "r|*") as tar:
            for member in tar:
                found = _release_path(member.name)
                if found is None or not member.isfile():
                    continue
                rank, path = found
                if not path.startswith(folder + "/") or ranks.get(path, len(PREFIXES)) <= rank:
                    continue
                out = tmp / path[len(folder) + 1:]
                out.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                ranks[path] = rank
            if not ranks:
                places = ", ".join(p + "/" if p else "the top level" for p in PREFIXES)
                raise DataError(f"{archive} holds no {folder}/ (looked under {places})")
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{archive} is truncated or corrupt ({type(err).__name__}: {err}); "
                        f"fetch it again with: {download_command()}") from err
    log.info("extracted %d files to %s", len(ranks), target)
    return target


def find(release: str | Path | None, folder: str, extract_dir: str | Path = DEFAULT_FOLDER
         ) -> Path:
    """The folder of a task from `release` (an archive or an extracted folder; by default
    data/lra_release.gz, then data/lra_release/)."""
    if release is None:
        if DEFAULT_ARCHIVE.is_file():
            release = DEFAULT_ARCHIVE
        elif DEFAULT_FOLDER.is_dir():
            release = DEFAULT_FOLDER
        else:
            raise DataError(f"no LRA release at {DEFAULT_ARCHIVE} or {DEFAULT_FOLDER}/; download "
                            f"it (about 8 GB, resumable) with: {download_command()}, or pass "
                            "--release PATH (the archive or an extracted folder)")
    release = Path(release)
    if release.is_dir():
        return locate(release, folder)
    if release.is_file():
        return extract(release, folder, extract_dir)
    raise DataError(f"{release} does not exist; download the release with: "
                    f"{download_command()}, or pass --release PATH")


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part` (one HTTP request); raises on any interruption."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the part is complete
            return
        raise
    with response:
        resumed = have and response.status == 206
        if have and not resumed:
            log.info("%s does not support resuming; starting over", url)
            have = 0
        remaining = response.headers.get("Content-Length")
        total = have + int(remaining) if remaining is not None else None
        with open(part, "ab" if resumed else "wb") as sink, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=part.name,
                disable=not progress, file=sys.stderr) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                sink.write(block)
                bar.update(len(block))
            # On disk before anything trusts its size: the next resume, or the final move.
            sink.flush()
            os.fsync(sink.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)


def download(url: str, dest: str | Path, *, sha256: str | None = None, retries: int = 3,
             timeout: float = 60.0, progress: bool = True) -> Path:
    """Download `url` to `dest` via `dest.part`, resuming after an interruption (up to `retries`
    times here, or by running again later). With `sha256`, a mismatch deletes the part."""
    dest = Path(dest)
    if sha256 is not None and not SHA256.fullmatch(sha256):
        raise DataError(f"--sha256 {sha256!r} is not a sha256 digest (64 hex digits)")
    if dest.exists():
        if sha256 is not None and file_sha256(dest) != sha256.lower():
            raise DataError(f"{dest} exists but its sha256 is not {sha256}; delete it to "
                            "download it again")
        log.info("%s exists; not downloading again", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as err:
            raise DataError(f"downloading {url} failed: HTTP {err.code} {err.reason}; check the "
                            "URL (--url) or fetch the file yourself and pass its path") from err
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            if getattr(err, "errno", None) in LOCAL_ERRNOS:
                raise DataError(f"cannot write {part} ({err.strerror}); free some space or "
                                "choose another destination with --dest") from err
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries and not have:
                raise DataError(f"cannot download {url} ({err}); check the network, or fetch "
                                "the file yourself and pass its path") from err
            if attempt == retries:
                raise DataError(f"downloading {url} stopped after {have} bytes ({err}); run "
                                f"the same command again to resume from {part}") from err
            log.warning("download interrupted at %d bytes (%s); resuming", have, err)
    if sha256 is not None:
        actual = file_sha256(part)
        if actual != sha256.lower():
            part.unlink()
            raise DataError(f"{url}: sha256 {actual} does not match the expected {sha256}; the "
                            f"download was deleted, run the command again to fetch it afresh")
    # Moved (not copied) into the atomic writer's temporary name, then renamed over dest.
    atomic_write(dest, lambda tmp: os.replace(part, tmp))
    log.info("downloaded %s (sha256 %s)", dest, sha256 or file_sha256(dest))
    return dest
