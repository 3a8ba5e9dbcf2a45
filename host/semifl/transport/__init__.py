

from semifl.protocol import wire


class Link:
    """What every host link has: `publish(topic, payload, qos, retain)` (its own) and blobs in chunks."""

    def publish_blob(self, topic: str, kind: int, blob_id: int, blob: bytes, chunk_size: int) -> int:
        """Publish a blob as chunks of at most chunk_size data bytes; returns the bytes sent."""
        sent = 0
        for chunk in wire.iter_chunks(kind, blob_id, blob, chunk_size):
            self.publish(topic, chunk)
            sent += len(chunk)
        return sent
