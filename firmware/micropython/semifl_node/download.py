"""A blob downloaded straight into flash, for the int8 model on an MCU: written chunk by chunk at its
offset, checked by CRC-32 before it replaces the previous file. RAM use: one chunk."""
import os

try:
    import wire
except ImportError:  # CPython with the host package installed
    from semifl.protocol import wire


def replace(src, dst):
    """Atomic swap where the filesystem renames over a file (POSIX, LittleFS); FAT needs the remove."""
    try:
        os.rename(src, dst)
    except OSError:
        os.remove(dst)
        os.rename(src, dst)


class FlashAssembler:
    """A blob reassembled straight into a flash file: each chunk is written at its offset as it comes
    (every chunk but the last is full, so the offset follows from seq), in any order, RAM = one chunk.
    Done when every chunk is in and the file's CRC-32 equals the blob CRC of the last chunk."""

    def __init__(self, path, blob_id, count, blob_len):
        self.blob_id, self.count, self.blob_len = blob_id, count, blob_len
        self.got = bytearray(count)
        self.left = count
        self.blob_crc = None
        self.f = open(path, "wb")
        zeros = bytes(512)
        for off in range(0, blob_len, 512):   # the file at full length: writes land in place
            self.f.write(zeros[:min(512, blob_len - off)])
        self.f.close()
        self.f = open(path, "r+b")

    def add(self, seq, bcrc, data):
        if self.got[seq]:
            return False   # QoS 1 delivers at least once
        last = seq == self.count - 1
        if last:
            off = self.blob_len - len(data)
            self.blob_crc = bcrc
        else:
            off = seq * len(data)
        if off < 0 or off + len(data) > self.blob_len or (not last and off + len(data) > self.blob_len - 1):
            raise wire.WireError("malformed", "chunk %d does not fit a %d-byte blob" % (seq, self.blob_len))
        self.f.seek(off)
        self.f.write(data)
        self.got[seq] = 1
        self.left -= 1
        if self.left:
            return False
        self.f.flush()
        self.f.seek(0)
        crc = 0
        buf = bytearray(512)
        while True:
            n = self.f.readinto(buf)
            if not n:
                break
            crc = wire.crc32(buf if n == 512 else buf[:n], crc)
        self.close()
        if crc & 0xFFFFFFFF != self.blob_crc:
            raise wire.WireError("crc", "blob %d" % self.blob_id)
        return True

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
