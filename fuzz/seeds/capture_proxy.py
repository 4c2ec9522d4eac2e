#!/usr/bin/env python3
"""Records real PROXY protocol v2 headers from haproxy, for the proxy_v2 seed corpus.

haproxy forwards IPv4 and IPv6 connections to a recording listener with `send-proxy-v2`
(plain, and with the unique-id and CRC32C TLVs), and its health checks send LOCAL headers.
The first bytes each connection delivers (header plus the client's HTTP request) are written
to OUT/haproxy_<n>.bin. Needs the `haproxy` Debian package.

    python3 fuzz/seeds/capture_proxy.py fuzz/corpus/proxy_v2
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

CONFIG = """
global
    log stdout format raw local0 emerg
defaults
    mode tcp
    timeout connect 1s
    timeout client 2s
    timeout server 2s
frontend v4
    bind 127.0.0.1:18851
    default_backend plain
frontend v6
    bind [::1]:18852
    default_backend tlvs
backend plain
    server s1 127.0.0.1:18850 send-proxy-v2 check inter 500ms
backend tlvs
    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt
    server s1 127.0.0.1:18850 send-proxy-v2 proxy-v2-options unique-id,crc32c
"""

REQUEST = b"POST /auth/bootstrap HTTP/1.1\r\nHost: iot-auth-global.aliyuncs.com\r\n\r\n"


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    captured = []
    listen = socket.socket()
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.bind(("127.0.0.1", 18850))
    listen.listen()

    def record():
        while True:
            try:
                conn, _ = listen.accept()
            except OSError:
                return
            conn.settimeout(0.5)
            data = bytearray()
            try:
                while len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data.extend(chunk)
            except OSError:
                pass
            conn.close()
            captured.append(bytes(data))

    threading.Thread(target=record, daemon=True).start()
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as cfg:
        cfg.write(CONFIG)
    proxy = subprocess.Popen(["haproxy", "-f", cfg.name], stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # at least one health check
    try:
        for family, address in [(socket.AF_INET, ("127.0.0.1", 18851)), (socket.AF_INET6, ("::1", 18852))]:
            client = socket.socket(family)
            client.connect(address)
            client.sendall(REQUEST)
            time.sleep(0.7)
            client.close()
        time.sleep(0.5)
    finally:
        proxy.terminate()
        listen.close()
        os.unlink(cfg.name)
    seen = set()
    for data in captured:
        if data and data not in seen:
            seen.add(data)
            path = os.path.join(out, f"haproxy_{len(seen)}.bin")
            with open(path, "wb") as f:
                f.write(data)
            print(path, len(data), data[12:14].hex())


if __name__ == "__main__":
    main()
