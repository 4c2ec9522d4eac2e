#!/usr/bin/env python3
"""paho-mqtt (the Eclipse Python client, 2.x) against a running Meridian broker.

Run by tests/tests/broker_interop.rs, which starts the broker and passes its port:

    paho_roundtrip.py standard PORT USERNAME PASSWORD
        QoS 0/1/2 round trip through a QoS 2 subscription, a retained message seen by a later
        subscriber, and a will published when its client's socket vanishes.
    paho_roundtrip.py device PORT PRODUCT_KEY DEVICE_NAME DEVICE_SECRET
        Connects with the vendor Python SDK's signature (PROTOCOL §2): CONNACK 0, then a QoS 1
        publish to /{pk}/{dn}/user/update acknowledged; a wrong secret is refused.

Prints what it checks and exits 0 when every check passed, 1 (with the reason) otherwise.
"""

import hashlib
import hmac
import queue
import sys
import time

import paho.mqtt.client as mqtt

# A guard against a hang, not a performance bound: the Rust side's own guard is longer.
WAIT = 20.0


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)
    print("ok:", what, flush=True)


def take(events, what):
    try:
        return events.get(timeout=WAIT)
    except queue.Empty:
        raise Failed(f"no {what} within {WAIT} s") from None


class Peer:
    """One paho client with its network loop in a thread and its callbacks fed into queues."""

    def __init__(self, port, client_id, username, password, will=None):
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.messages = queue.Queue()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.username_pw_set(username, password)
        if will is not None:
            topic, payload = will
            client.will_set(topic, payload, qos=1)
        client.on_connect = lambda _c, _u, _flags, reason, _props: self.connacks.put(reason)
        client.on_subscribe = lambda _c, _u, _mid, reasons, _props: self.subacks.put(reasons)
        client.on_message = lambda _c, _u, message: self.messages.put(message)
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        self.client = client
        self.connack = take(self.connacks, f"CONNACK for {client_id}")

    def subscribe(self, topic, qos):
        self.client.subscribe(topic, qos)
        reasons = take(self.subacks, f"SUBACK for {topic}")
        return [reason.value for reason in reasons]

    def publish(self, topic, payload, qos, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        # For QoS 1/2 this returns once PUBACK/PUBCOMP arrived, i.e. after the broker routed it.
        info.wait_for_publish(timeout=WAIT)
        check(info.is_published(), f"publish to {topic} at QoS {qos} completed")

    def message(self, topic):
        """The next message on `topic`, skipping others this client also receives."""
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"no message on {topic} within {WAIT} s")
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if message.topic == topic:
                return message

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def standard(port, username, password):
    subscriber = Peer(port, "paho-sub", username, password)
    check(subscriber.connack == 0, "subscriber connected")
    granted = subscriber.subscribe("paho/#", 2)
    check(granted == [2], f"QoS 2 granted for paho/# (got {granted})")

    publisher = Peer(port, "paho-pub", username, password)
    check(publisher.connack == 0, "publisher connected")
    for qos in (0, 1, 2):
        topic = f"paho/qos{qos}"
        publisher.publish(topic, f"payload-{qos}".encode(), qos)
        message = subscriber.message(topic)
        check(message.payload == f"payload-{qos}".encode(), f"{topic} payload delivered")
        check(message.qos == qos, f"{topic} delivered at QoS {qos} (got {message.qos})")

    # Retained: acknowledged after routing, so a subscriber arriving later must get it.
    publisher.publish("paho/retained", b"kept", 1, retain=True)
    late = Peer(port, "paho-late", username, password)
    check(late.subscribe("paho/retained", 1) == [1], "late subscriber granted QoS 1")
    message = late.message("paho/retained")
    check(message.payload == b"kept" and message.retain, "retained message replayed with retain")
    late.close()

    # Will: the socket goes away without DISCONNECT, as when a device loses power.
    mortal = Peer(port, "paho-mortal", username, password, will=("paho/will", b"gone"))
    check(mortal.connack == 0, "client with a will connected")
    mortal.client.loop_stop()
    mortal.client.socket().close()
    message = subscriber.message("paho/will")
    check(message.payload == b"gone", "will published after an abrupt close")

    publisher.close()
    subscriber.close()


def sign(product_key, device_name, secret, timestamp):
    """The vendor Python SDK's CONNECT credentials (PROTOCOL §2, hmacsha1, plain TCP)."""
    client_id = f"{product_key}&{device_name}|securemode=3,signmethod=hmacsha1,timestamp={timestamp}|"
    username = f"{device_name}&{product_key}"
    content = (
        f"clientId{product_key}&{device_name}"
        f"deviceName{device_name}productKey{product_key}timestamp{timestamp}"
    )
    password = hmac.new(secret.encode(), content.encode(), hashlib.sha1).hexdigest()
    return client_id, username, password


def device(port, product_key, device_name, secret):
    timestamp = int(time.time() * 1000)
    client_id, username, password = sign(product_key, device_name, secret, timestamp)
    lamp = Peer(port, client_id, username, password)
    check(lamp.connack == 0, f"device connected with the SDK signature (CONNACK {lamp.connack})")
    lamp.publish(f"/{product_key}/{device_name}/user/update", b'{"power":"on"}', 1)
    lamp.close()

    client_id, username, password = sign(product_key, device_name, secret + "x", timestamp)
    impostor = Peer(port, client_id, username, password)
    check(impostor.connack.is_failure, f"a wrong secret is refused ({impostor.connack})")
    impostor.client.loop_stop()


def main(argv):
    mode, port, *rest = argv[1:]
    try:
        if mode == "standard":
            standard(int(port), *rest)
        elif mode == "device":
            device(int(port), *rest)
        else:
            raise Failed(f"unknown mode {mode}")
    except Failed as failure:
        print("FAILED:", failure, flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
