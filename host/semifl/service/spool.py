"""The spool: accepted payloads (updates, sample batches) on disk, one append-only file per round, so the
store's SQLite keeps only the small rows (who, kind, n) and no blob goes through it on the hot path.

A file is a header (magic, format, the owning store's token) and records, each
`<4s "SFR1"><I key_len><Q data_len><I data_crc><I head_crc>` then the key (JSON [device, kind]) and the
data: data_crc is the data's CRC-32, head_crc covers the record's first 20 bytes and the key. Opening a file rebuilds its index (key -> where its data is) by reading it
through: the first record that is short or fails its CRC is a torn tail (a crash or a power cut in the
middle of an append): the index ends before it, and the next append cuts it off and follows the last
whole record. A key
written twice is the later record.

Durability: `append` returns once the record is written (in the page cache): a killed process loses
nothing. The file is synced (fdatasync) in batches, in a background thread every SYNC_BYTES appended, and
once more when the round closes (`sync`, before its result is committed). A power cut can lose the
records appended since the last sync that completed (at most about SYNC_BYTES, plus one in flight);
`Store` then drops the rows whose record is gone, so the round asks those devices again. Files are removed only by `drop`, and only
those this spool made (its token in their name and header): a round's file once the store holds the
round's result.

Without a folder (an in-memory store) each round's file is an anonymous temporary file: gone with the
process, never synced.
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("semifl.spool")

FILE_MAGIC = b"SFSPOOL1"
RECORD = struct.Struct("<4sIQII")   # magic, key length, data length, data CRC-32, head CRC-32
RECORD_MAGIC = b"SFR1"
SYNC_BYTES = 64 << 20   # a durable spool syncs in the background after this many bytes


class Spool:
    def __init__(self, folder: str | None, token: str):
        """folder: where the round files live (made on the first append); None: anonymous temporary
        files. token: the owning store's id (hex), in every file's name and header."""
        self.folder, self.token = folder, token
        self.head = FILE_MAGIC + bytes.fromhex(token)
        self._files: dict[int, int] = {}                       # round -> fd
        self._index: dict[int, dict[tuple[str, str], tuple[int, int, int]]] = {}   # key -> (offset, length, crc)
        self._end: dict[int, int] = {}                         # round -> offset after the last whole record
        self._unsynced = 0                                     # bytes appended since the last sync was asked for
        self._flusher: ThreadPoolExecutor | None = None        # the background thread: syncs, removals
        self._syncing = None                                   # its sync in flight
        self._crc: ThreadPoolExecutor | None = None            # checksums computed beside the caller's work

    # --- files --------------------------------------------------------------------------------------
    def _name(self, rnd: int) -> str:
        return os.path.join(self.folder, f"{self.token}-{rnd:08d}.spool")

    def rounds(self) -> list[int]:
        """Rounds that have a file of this spool on disk."""
        if self.folder is None or not os.path.isdir(self.folder):
            return sorted(self._files)
        pat = re.compile(re.escape(self.token) + r"-(\d{8})\.spool$")
        return sorted(int(m.group(1)) for m in map(pat.match, os.listdir(self.folder)) if m)

    def _open(self, rnd: int, create: bool) -> int | None:
        fd = self._files.get(rnd)
        if fd is not None:
            return fd
        if self.folder is None:
            if not create:
                return None
            fd, path = tempfile.mkstemp(prefix="semifl-spool-")
            os.unlink(path)   # anonymous: gone with the process
            os.write(fd, self.head)
            self._files[rnd], self._index[rnd], self._end[rnd] = fd, {}, len(self.head)
            return fd
        path = self._name(rnd)
        if not create and not os.path.exists(path):
            return None
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._files[rnd] = fd
        self._load(rnd, fd)
        return fd

    def _load(self, rnd: int, fd: int) -> None:
        """Rebuild round `rnd`'s index from its file; cut a torn tail off."""
        size = os.fstat(fd).st_size
        index, end = {}, len(self.head)
        if size < len(self.head) and self.head.startswith(os.pread(fd, size, 0)):   # new, or torn at its start
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.head, 0)
            size = len(self.head)
        elif os.pread(fd, len(self.head), 0) != self.head:
            os.close(fd)
            del self._files[rnd]
            raise ValueError(f"{self._name(rnd)} is not a spool file of this store")
        while end + RECORD.size <= size:
            raw = os.pread(fd, RECORD.size, end)
            magic, klen, dlen, crc, hcrc = RECORD.unpack(raw)
            start = end + RECORD.size + klen
            if magic != RECORD_MAGIC or start + dlen > size:
                break
            key = os.pread(fd, klen, end + RECORD.size)
            if zlib.crc32(key, zlib.crc32(raw[:-4])) != hcrc or zlib.crc32(os.pread(fd, dlen, start)) != crc:
                break
            try:
                dev, kind = json.loads(key)
            except ValueError:
                break
            index[(dev, kind)] = (start, dlen, crc)
            end = start + dlen
        if end < size:   # cut off by the next append (a reader leaves the file as it is)
            log.warning("%s: %d bytes after the last whole record: a torn append", self._name(rnd), size - end)
        self._index[rnd], self._end[rnd] = index, end

    # --- records ------------------------------------------------------------------------------------
    def append(self, rnd: int, key: tuple[str, str], data, crc: int | None = None) -> None:
        """Write `data` under `key` in round `rnd`'s file. crc: the CRC-32 of `data` where the caller
        already has it (the wire's blob CRC), else computed here."""
        fd = self._open(rnd, True)
        k = json.dumps(list(key)).encode()
        crc = zlib.crc32(data) if crc is None else crc
        head = RECORD.pack(RECORD_MAGIC, len(k), len(data), crc, 0)[:-4]
        head += struct.pack("<I", zlib.crc32(k, zlib.crc32(head)))
        at, total = self._end[rnd], len(head) + len(k) + len(data)
        if os.fstat(fd).st_size > at:
            os.ftruncate(fd, at)   # a torn tail: the next record follows the last whole one
        try:
            done = os.pwritev(fd, [head, k, data], at)
            if done < total:   # a short write (a signal, a full disk): the rest, or its error
                rest = memoryview(b"".join([head, k, data]))
                while done < total:
                    done += os.pwrite(fd, rest[done:], at + done)
        except BaseException:
            os.ftruncate(fd, at)   # never leave half a record before the next one
            raise
        self._index[rnd][tuple(key)] = (at + len(head) + len(k), len(data), crc)
        self._end[rnd] = at + total
        self._unsynced += total
        if self.folder is not None and self._unsynced >= SYNC_BYTES and (self._syncing is None or self._syncing.done()):
            self._wait()   # (done: only its error, if it had one)
            self._syncing, self._unsynced = self._background().submit(os.fdatasync, fd), 0

    def checksum(self, data):
        """A future of data's CRC-32, computed in a helper thread (zlib lets go of the GIL) while the
        caller checks the data it is about to append: pass its result to `append`."""
        if self._crc is None:
            self._crc = ThreadPoolExecutor(1, thread_name_prefix="spool-crc")
        return self._crc.submit(zlib.crc32, data)

    def _wait(self) -> None:
        """Until the background sync in flight is done (its error raised here)."""
        if self._syncing is not None:
            f, self._syncing = self._syncing, None
            f.result()

    def keys(self, rnd: int) -> set[tuple[str, str]]:
        if self._open(rnd, False) is None:
            return set()
        return set(self._index[rnd])

    def get(self, rnd: int, key: tuple[str, str]) -> bytes | None:
        """The data last written under `key` in round `rnd`, or None."""
        fd = self._open(rnd, False)
        at = None if fd is None else self._index[rnd].get(tuple(key))
        if at is None:
            return None
        return os.pread(fd, at[1], at[0])

    def sync(self, rnd: int) -> None:
        """Round `rnd`'s records on disk (fdatasync; nothing for temporary files)."""
        fd = self._files.get(rnd)
        if fd is not None and self.folder is not None:
            self._wait()
            os.fdatasync(fd)
            self._unsynced = 0

    def drop(self, upto: int) -> None:
        """Remove the files of rounds <= `upto` (this spool's only), and the folder once it is empty. The
        removal itself runs in the background thread: freeing a file of gigabytes takes the file system
        a second, which the next round need not wait for (`close` waits for it)."""
        self._wait()
        fds, paths = [], []
        for rnd in [r for r in set(self._files) | set(self.rounds()) if r <= upto]:
            fd = self._files.pop(rnd, None)
            if fd is not None:
                fds.append(fd)
            self._index.pop(rnd, None)
            self._end.pop(rnd, None)
            if self.folder is not None:
                paths.append(self._name(rnd))
        if fds or paths:
            self._background().submit(_remove, fds, paths, self.folder)

    def _background(self) -> ThreadPoolExecutor:
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(1, thread_name_prefix="spool")
        return self._flusher

    def close(self) -> None:
        self._wait()
        if self._flusher is not None:
            self._flusher.shutdown()
            self._flusher = None
        if self._crc is not None:
            self._crc.shutdown()
            self._crc = None
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        self._index.clear()
        self._end.clear()


def _remove(fds: list[int], paths: list[str], folder: str | None) -> None:
    """Close and remove a dropped round's files (closing the last descriptor of an anonymous one frees it)."""
    for fd in fds:
        os.close(fd)
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if folder is not None:
        try:
            os.rmdir(folder)   # only if empty: another store's files, or anyone's, stay
        except OSError:
            pass
