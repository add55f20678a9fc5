"""Leases on units of work in a store, so that concurrent runs never do the same work twice.

`aape bank generate` takes one lease per class it asks the LLM about; a second run on the same
domain skips the classes leased by the first, works on the others, and comes back to each
skipped class when its lease is released or expires.

A lease is a folder of generation files, `<root>/<name>/<generation>.json`; the newest one says
who holds the lease and until when: `{"owner", "state": "held" | "released", "expires", "what"}`.
- Taking a lease creates the next generation exclusively: on a local folder a hard link of a
  complete temp file (which fails when the name exists), on an fsspec URL an exclusive `"xb"`
  create (a conditional put: s3fs from 2025.7, gcsfs, adlfs). Of two runs that try one
  generation, one wins.
  A run whose listing was stale learns it by listing again after its create and backs off.
- A lease is live while its newest file is `held` and not expired. The holder renews it by
  creating the next generation (so a holder that stalled past expiry learns that it lost it)
  and releases it by creating a `released` one. Whoever creates a generation deletes the older
  ones; the newest is never deleted, so generations only grow.
- A run killed with -9 leaves a `held` file that expires `ttl_s` after its last renewal; then
  another run takes the lease over. Expiry compares wall clocks: hosts sharing a store need
  clocks that agree to within a small part of `ttl_s`. A run on the same machine (host and
  process-id namespace) whose process has ended holds nothing: its leases are taken at once.

Leases save work, they do not keep stores correct: row keys do that (a store skips stored keys).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec

from prompt_banks.errors import UserError
from prompt_banks.paths import is_url, join

log = logging.getLogger(__name__)

_GENERATION = re.compile(r"^(\d{12})\.json$")


@dataclass(frozen=True)
class LeaseFile:
    """The newest generation of a lease."""

    generation: int
    owner: str
    state: str  # held, released, unreadable
    expires: float  # Unix time

    def live(self, now: float) -> bool:
        return self.state == "held" and self.expires > now


def _machine() -> str:
    """This host, its boot and its process-id namespace: where a process id names one process
    (Linux; elsewhere the host name alone)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    except OSError:
        boot = namespace = ""
    return f"{socket.gethostname()}{'/' + boot if boot else ''}{namespace}"


def _gone(owner: str) -> bool:
    """True when `owner` ran on this machine and its process has ended (killed with -9, say):
    its leases need not wait for their expiry. Owners elsewhere are never known to be gone."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != _machine() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


class _Folder:
    """List, read, exclusively create and delete small files under a local folder or a URL."""

    def __init__(self, root: Path | str) -> None:
        self.url = is_url(root)
        self.root = root
        self.fs = fsspec.core.url_to_fs(str(root))[0] if self.url else None

    def path(self, *parts: str) -> Path | str:
        return join(self.root, *parts)

    def names(self, folder: Path | str) -> list[str]:
        try:
            if self.fs is None:
                return os.listdir(folder)
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(str(folder), detail=False)]
        except (FileNotFoundError, NotADirectoryError):  # never taken (or in the way: create says)
            return []

    def read(self, path: Path | str) -> bytes | None:
        try:
            if self.fs is None:
                return Path(path).read_bytes()
            with self.fs.open(str(path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def create(self, path: Path | str, data: bytes) -> bool:
        """Publish `data` as `path` unless `path` exists; True when this call created it."""
        try:
            return self._create(path, data)
        except OSError as exc:
            reason = exc.strerror or str(exc).replace("\n", " ")
            raise UserError(
                f"leases: cannot write {path} ({reason}); pick a writable --home"
            ) from exc

    def _create(self, path: Path | str, data: bytes) -> bool:
        if self.fs is not None:
            self.fs.makedirs(str(path).rsplit("/", 1)[0], exist_ok=True)
            try:
                with self.fs.open(str(path), "xb") as f:
                    f.write(data)
            except FileExistsError:
                return False
            return True
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, final)  # atomic, whole, and refused when `final` exists
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: an exclusive create instead
            try:
                with open(final, "xb") as f:
                    f.write(data)
            except FileExistsError:
                return False
        finally:
            tmp.unlink()
        return True

    def delete(self, path: Path | str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.fs is None:
                Path(path).unlink()
            else:
                self.fs.rm_file(str(path))


class Leases:
    """The leases this process holds under `root` (a local folder or an fsspec URL)."""

    def __init__(self, root: Path | str, *, ttl_s: float = 60.0) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.ttl_s = ttl_s
        self.owner = f"{_machine()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._folder = _Folder(root)
        # name -> (generation held, what, time of the last renewal)
        self._held: dict[str, tuple[int, str, float]] = {}

    @property
    def held(self) -> list[str]:
        return sorted(self._held)

    def _generations(self, name: str) -> list[int]:
        found = (_GENERATION.match(n) for n in self._folder.names(self._folder.path(name)))
        return sorted(int(m.group(1)) for m in found if m)

    def _file(self, name: str, generation: int) -> Path | str:
        return self._folder.path(name, f"{generation:012d}.json")

    def newest(self, name: str) -> LeaseFile | None:
        """The newest generation of lease `name`, or None when it was never taken."""
        generations = self._generations(name)
        if not generations:
            return None
        g = generations[-1]
        raw = self._folder.read(self._file(name, g))
        try:
            doc = json.loads(raw or b"")
            return LeaseFile(g, str(doc["owner"]), str(doc["state"]), float(doc["expires"]))
        except (ValueError, KeyError, TypeError):
            # Pruned under our feet (the next one is newer) or damaged: it holds nothing.
            return LeaseFile(g, "", "unreadable", 0.0)

    def _write(self, name: str, generation: int, state: str, what: str) -> bool:
        now = time.time()
        doc = {"owner": self.owner, "state": state, "expires": now + self.ttl_s, "what": what}
        if not self._folder.create(self._file(name, generation), json.dumps(doc).encode()):
            return False
        # A stale listing can create a generation that was pruned: a newer one exists then.
        generations = self._generations(name)
        if generations[-1] != generation:
            return False
        for older in generations[:-1]:
            self._folder.delete(self._file(name, older))
        return True

    def take(self, name: str, what: str = "") -> int | None:
        """Take lease `name` unless another run holds it; returns the generation taken (0 for a
        lease never taken before), else None. `what` labels the lease for people."""
        if name in self._held:
            return self._held[name][0]
        newest = self.newest(name)
        if newest is not None and newest.live(time.time()) and not _gone(newest.owner):
            return None
        generation = 0 if newest is None else newest.generation + 1
        if not self._write(name, generation, "held", what):
            return None
        if newest is not None and newest.state == "held":
            log.info("leases: took over %s from %s (expired or ended)", what or name, newest.owner)
        self._held[name] = (generation, what, time.monotonic())
        return generation

    def renew_due(self) -> list[str]:
        """Renew every lease held for over a third of `ttl_s`; returns the names lost to another
        run (this one stalled past expiry)."""
        lost = []
        now = time.monotonic()
        for name, (generation, what, renewed) in list(self._held.items()):
            if now - renewed < self.ttl_s / 3:
                continue
            if self._write(name, generation + 1, "held", what):
                self._held[name] = (generation + 1, what, now)
            else:
                del self._held[name]
                lost.append(name)
                log.warning("leases: lost %s to another run (this one stalled)", what or name)
        return lost

    def release(self, name: str) -> None:
        """Give lease `name` back (a lease this run does not hold is left alone)."""
        held = self._held.pop(name, None)
        if held is not None:
            self._write(name, held[0] + 1, "released", held[1])

    def release_all(self) -> None:
        for name in self.held:
            self.release(name)
