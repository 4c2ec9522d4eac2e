"""Drives the vendor's Python device SDK (aliyun-iot-linkkit 1.2.13) for tests/tests/linkkit_sdk.rs.

The SDK signs its own CONNECT (clientId `pk&dn|securemode=3,signmethod=hmacsha1,...|`) and
connects over plain TCP to the custom endpoint given on the command line, with clean session
set. Events go to stdout as one JSON object per line; commands come on stdin, one per line:

    post <json object>     thing_post_property (thing.event.property.post)
    subscribe <topic>      subscribe_topic at QoS 1
    quit                   disconnect and exit

Usage: driver.py HOST PORT PRODUCT_KEY DEVICE_NAME DEVICE_SECRET
"""

import json
import sys
import threading

from linkkit import linkkit

_out = threading.Lock()


def emit(**event):
    with _out:
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def main():
    host, port, product_key, device_name, device_secret = sys.argv[1:6]
    lk = linkkit.LinkKit(
        host_name="cn-shanghai",
        product_key=product_key,
        device_name=device_name,
        device_secret=device_secret,
    )
    # Plain TCP to the test broker; reconnect quickly after a kick.
    lk.config_mqtt(
        port=int(port),
        secure="",
        endpoint=host,
        keep_alive=60,
        clean_session=True,
        auto_reconnect_min_sec=1,
        auto_reconnect_max_sec=2,
    )
    # The SDK calls on_connect before it marks its thing layer enabled (on its handler thread),
    # and refuses thing_post_property until then: a post sent on on_connect alone can be
    # refused with rc 1. So a successful connect is reported once the thing layer is enabled.
    connect = {}

    def on_connect(session_flag, rc, userdata):
        if rc != 0:
            emit(event="connected", rc=rc, session=bool(session_flag))
        else:
            connect["session"] = bool(session_flag)

    lk.on_connect = on_connect
    lk.on_thing_enable = lambda userdata: emit(
        event="connected", rc=0, session=connect.get("session", False)
    )
    lk.on_disconnect = lambda rc, userdata: emit(event="disconnected", rc=rc)
    lk.on_subscribe_topic = lambda mid, granted_qos, userdata: emit(
        event="subscribed", granted=list(granted_qos)
    )
    lk.on_topic_message = lambda topic, payload, qos, userdata: emit(
        event="message", topic=topic, payload=payload.decode("utf-8", "replace"), qos=qos
    )
    lk.on_thing_prop_post = lambda request_id, code, data, message, userdata: emit(
        event="property_reply", code=code
    )
    # No TSL file: properties are posted as given.
    lk.thing_setup()
    lk.connect_async()

    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "post":
            rc, request_id = lk.thing_post_property(json.loads(argument))
            emit(event="posted", rc=rc)
        elif command == "subscribe":
            rc, mid = lk.subscribe_topic(argument, 1)
            emit(event="subscribing", rc=rc)
        elif command == "quit":
            break
    lk.disconnect()
    emit(event="bye")


if __name__ == "__main__":
    main()
