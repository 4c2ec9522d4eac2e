#!/usr/bin/env python3
"""Records what real MQTT clients put on the wire, for the mqtt_decode seed corpus.

Starts a throwaway mosquitto broker, puts a TCP relay in front of it, and runs mosquitto_pub /
mosquitto_sub (MQTT 3.1.1 and 5.0) through the relay. Every client->broker byte stream is
written to OUT/<name>.bin, prefixed with the fuzz target's knob byte. Needs `mosquitto` and
`mosquitto-clients` (Debian packages).

    python3 fuzz/seeds/capture.py fuzz/corpus/mqtt_decode
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

# The knob byte the mqtt_decode target reads first: 1 MiB packet limit, 1-byte chunks.
KNOB = b"\x03"


def relay(listen, upstream_port, state):
    while True:
        try:
            client, _ = listen.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        captured = bytearray()
        state["sink"].append(captured)

        def pump(src, dst, record):
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if record is not None:
                    record.extend(data)
                dst.sendall(data)

        threading.Thread(target=pump, args=(client, upstream, captured), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    broker_port, relay_port = 18830, 18831
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen(["mosquitto", "-c", conf.name], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    listen = socket.socket()
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.bind(("127.0.0.1", relay_port))
    listen.listen()
    state = {"sink": []}
    threading.Thread(target=relay, args=(listen, broker_port, state), daemon=True).start()
    try:
        for version in ["mqttv311", "mqttv5"]:
            common = ["-h", "127.0.0.1", "-p", str(relay_port), "-V", version]
            login = ["-u", "dev1&a13FN5TplKq", "-P", "secret"]
            cases = {
                "sub": (["mosquitto_sub", *common, *login, "-i", "sub-1", "-c", "-q", "2",
                         "-t", "/a13FN5TplKq/dev1/user/#", "-t", "/sys/a13FN5TplKq/+/thing/#",
                         "-C", "3", "-W", "3"], True),
                "pub_q0": (["mosquitto_pub", *common, *login, "-i", "pub-0", "-q", "0", "-r",
                            "-t", "/a13FN5TplKq/dev1/user/update", "-m", '{"on":true}'], False),
                "pub_q1": (["mosquitto_pub", *common, "-i", "pub-1", "-q", "1",
                            "-t", "/a13FN5TplKq/dev1/user/update", "-m", "x" * 300,
                            "--will-topic", "w/t", "--will-payload", "gone", "--will-qos", "1"],
                           False),
                "pub_q2": (["mosquitto_pub", *common, "-i", "pub-2", "-q", "2",
                            "-t", "/a13FN5TplKq/dev1/user/update", "-m", "exactly once"], False),
            }
            for name, (argv, background) in cases.items():
                sink = state["sink"] = []
                if background:
                    sub = subprocess.Popen(argv)
                    time.sleep(0.5)
                    for n in range(3):
                        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker_port),
                                        "-q", "2", "-t", "/a13FN5TplKq/dev1/user/x", "-m", str(n)])
                    sub.wait(timeout=10)
                else:
                    subprocess.run(argv, timeout=10)
                time.sleep(0.3)
                for n, captured in enumerate(sink):
                    path = os.path.join(out, f"mosquitto_{version}_{name}_{n}.bin")
                    with open(path, "wb") as f:
                        f.write(KNOB + bytes(captured))
                    print(path, len(captured))
    finally:
        listen.close()
        broker.terminate()
        os.unlink(conf.name)


if __name__ == "__main__":
    main()
