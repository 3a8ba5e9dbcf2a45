# umqtt.simple's MQTTClient with what a node on an open network needs: TLS with the fleet's CA
# through ssl.SSLContext (umqtt.simple 1.3.4 calls ussl.wrap_socket, which newer ports lack), and a
# bound on what it reads (a PUBLISH over max_msg is skipped in small pieces, never allocated whole:
# one 17 KB message used to end an MCU in MemoryError).
import gc

from umqtt import simple

SKIP = 256   # bytes read at a time while skipping an oversized message


class _TLS:
    """The TLS stream as umqtt and the node use a socket: read/write from the TLS object, timeouts
    and options on the TCP socket under it (MicroPython's SSLSocket has neither)."""

    def __init__(self, tls, raw):
        self.tls, self.raw = tls, raw

    def read(self, n=-1):
        return self.tls.read(n)

    def readinto(self, buf, n=None):
        return self.tls.readinto(buf) if n is None else self.tls.readinto(buf, n)

    def write(self, buf, n=None):
        return self.tls.write(buf if n is None else memoryview(buf)[:n])

    def setblocking(self, flag):
        self.tls.setblocking(flag)

    def connect(self, addr):
        pass   # connected before the handshake

    def settimeout(self, t):
        self.raw.settimeout(t)

    def setsockopt(self, *a):
        self.raw.setsockopt(*a)

    def close(self):
        try:
            self.tls.close()
        finally:
            self.raw.close()


class MQTTClient(simple.MQTTClient):
    """ca: the fleet CA's PEM bytes (cadata) when ssl is on; server_hostname: the name the broker's
    certificate is checked against (default: the server); max_msg: the largest PUBLISH payload kept."""

    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=False,
                 ca=None, server_hostname=None, max_msg=8192):
        super().__init__(client_id, server, port, user, password, keepalive, ssl)
        self.ca, self.server_hostname, self.max_msg = ca, server_hostname or server, max_msg
        self.skipped = 0   # oversized messages read past

    def connect(self, clean_session=True):
        if not self.ssl:
            return super().connect(clean_session)
        import socket
        import ssl

        raw = socket.socket()
        raw.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.ca)
        gc.collect()   # the handshake's buffers need the heap's largest free blocks
        self.sock = _TLS(ctx.wrap_socket(raw, server_hostname=self.server_hostname), raw)
        # the rest of umqtt's connect with the stream made: it only writes the CONNECT and reads CONNACK
        self.ssl, sock = False, self.sock
        try:
            socket_ = simple.socket
            simple.socket = _Made(sock)   # umqtt.simple's connect() makes its own socket: hand it ours
            return super().connect(clean_session)
        finally:
            simple.socket, self.ssl = socket_, True

    def wait_msg(self):
        # umqtt.simple's, except that a PUBLISH whose payload exceeds max_msg is read in SKIP-byte
        # pieces and dropped (acked if QoS 1, so the broker does not resend it)
        res = self.sock.read(1)
        self.sock.setblocking(True)
        if res is None:
            return None
        if res == b"":
            raise OSError(-1)
        if res == b"\xd0":  # PINGRESP
            self.sock.read(1)
            return None
        op = res[0]
        if op & 0xF0 != 0x30:
            return op
        sz = self._recv_len()
        topic_len = self.sock.read(2)
        topic_len = (topic_len[0] << 8) | topic_len[1]
        if topic_len > sz or topic_len > 256:
            raise OSError("bad PUBLISH: topic of %d bytes" % topic_len)
        topic = self.sock.read(topic_len)
        sz -= topic_len + 2
        pid = 0
        if op & 6:
            pid = self.sock.read(2)
            pid = pid[0] << 8 | pid[1]
            sz -= 2
        if sz > self.max_msg:
            self.skipped += 1
            print("semifl-node: skipped a %d-byte message on %s (max %d)" % (sz, topic, self.max_msg))
            buf = bytearray(SKIP)
            while sz > 0:
                n = self.sock.readinto(buf, min(SKIP, sz))
                if not n:
                    raise OSError(-1)
                sz -= n
        else:
            self.cb(topic, self.sock.read(sz))
        if op & 6 == 2:
            pkt = bytearray(b"\x40\x02\0\0")
            pkt[2], pkt[3] = pid >> 8, pid & 0xFF
            self.sock.write(pkt)
        elif op & 6 == 4:
            raise OSError("QoS 2 is not supported")


class _Made:
    """The socket module as umqtt.simple.connect() sees it during a TLS connect: its "new socket" is
    the TLS stream made already (connected: its connect() does nothing)."""

    def __init__(self, sock):
        self.sock = sock

    def socket(self):
        return self.sock

    def getaddrinfo(self, host, port):
        return [(None, None, None, None, (host, port))]
