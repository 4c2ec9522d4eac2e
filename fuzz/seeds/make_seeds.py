#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ that do not need a capture tool.

The MQTT device CONNECTs are the PROTOCOL §2 C SDK 4.1.0 capture byte for byte, and the Python and
Node SDK shapes (signed as registry::signature::sign_connect does); the bootstrap forms are the
C SDK's and the vendor documentation's; CSVs are the control plane's templates; JSON bodies are
the admin API's documented requests; TOML is deploy/'s shipped configuration.
`capture.py` (mosquitto) and `capture_proxy.py` (haproxy) add the network captures.

    python3 fuzz/seeds/make_seeds.py        # from the repository root
"""
import hashlib
import hmac
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
KNOB = b"\x03"  # mqtt_decode: 1 MiB limit, 1-byte chunks

PK, DN, SECRET = "a13FN5TplKq", "bootstrap_posix_demo", "pZeRIoLApMRp2i1LAD4D5FREp3yPVBwy"
C_SDK_CLIENT_ID = ("a13FN5TplKq.bootstrap_posix_demo|timestamp=2524608000000,_ss=1,"
                   "_v=sdk-c-4.1.0,securemode=3,signmethod=hmacsha256,ext=3,_conn=tls_0|")
C_SDK_PASSWORD = "0B8307DDC1BE4049045F3FAC6F9ED3DA0F11C58451F243004E711000144031D1"


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def sign(method, cid, ts):
    content = f"clientId{cid}deviceName{DN}productKey{PK}" + (f"timestamp{ts}" if ts else "")
    digest = {"hmacmd5": hashlib.md5, "hmacsha1": hashlib.sha1, "hmacsha256": hashlib.sha256}[method]
    return hmac.new(SECRET.encode(), content.encode(), digest).hexdigest()


def remaining_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    s = s.encode() if isinstance(s, str) else s
    return len(s).to_bytes(2, "big") + s


def connect(client_id, username, password, keep_alive=60, level=4, flags=0xC2, props=b""):
    body = string("MQTT") + bytes([level, flags]) + keep_alive.to_bytes(2, "big")
    if level == 5:
        body += remaining_length(len(props)) + props
    body += string(client_id) + string(username) + string(password)
    return b"\x10" + remaining_length(len(body)) + body


def logins():
    python_cid = f"{PK}&{DN}|securemode=3,signmethod=hmacsha1,timestamp=1700000000|"
    node_cid = f"{PK}&{DN}|timestamp=1700000000000,securemode=2,signmethod=hmacsha256,lan=JS|WX,ext=1|"
    assigned = "|securemode=2,signmethod=hmacsha256,timestamp=1700000000000|"
    return {
        "c_sdk": (C_SDK_CLIENT_ID, C_SDK_PASSWORD),
        "python": (python_cid, sign("hmacsha1", f"{PK}&{DN}", "1700000000")),
        "node": (node_cid, sign("hmacsha256", f"{PK}&{DN}", "1700000000000")),
        "mqtt5_assigned": (assigned, sign("hmacsha256", "", "1700000000000")),
        "bare_md5": (f"{PK}.{DN}", sign("hmacmd5", f"{PK}.{DN}", None)),
    }


def mqtt():
    username = f"{DN}&{PK}"
    for name, (cid, password) in logins().items():
        # The C SDK sends PINGREQ right after CONNACK (PROTOCOL §2).
        write("mqtt_decode", f"{name}_connect.bin", KNOB + connect(cid, username, password) + b"\xc0\x00")
    cid, password = logins()["mqtt5_assigned"]
    # An MQTT 5 CONNECT (session expiry and receive maximum properties): refused with 0x01.
    props = b"\x11\x00\x00\x00\x3c\x21\x00\x10"
    write("mqtt_decode", "mqtt5_connect.bin", KNOB + connect(cid, username, password, level=5, props=props))
    write("mqtt_decode", "mqtt31_connect.bin", KNOB + b"\x10\x0e" + string("MQIsdp") + b"\x03\x02\x00\x3c" + string("c"))
    sub = b"\x82" + remaining_length(2 + 3 + 7 + 1) + b"\x00\x01" + string("a/+/b/#") + b"\x01"
    publish = b"\x32\x09" + string("a/b") + b"\x00\x07" + b"hi"
    unsubscribe = b"\xa2\x05\x00\x02" + string("a")
    # A standard client's session: SUBSCRIBE, QoS 1 PUBLISH, UNSUBSCRIBE, PUBACK, PINGREQ,
    # DISCONNECT; knob 0xff (1 MiB limit, 64-byte chunks).
    write("mqtt_decode", "standard_session.bin", b"\xff" + connect("std", "alice", "pw") + sub
          + publish + unsubscribe + b"\x40\x02\x00\x07\xc0\x00\xe0\x00")


def device_login():
    username = f"{DN}&{PK}"
    for name, (cid, password) in logins().items():
        write("device_login", name, f"{cid}\0{username}\0{password}")


def forms():
    write("bootstrap_form", "c_sdk", f"productKey={PK}&deviceName={DN}&clientId={PK}.{DN}"
          "&timestamp=2524608000000&resources=mqtt")
    write("bootstrap_form", "vendor_doc", "productKey=a1b2c3d4e5f&timestamp=123&version=default"
          "&clientId=123&resources=mqtt&deviceName=test")
    write("bootstrap_form", "encoded", "deviceName=dev%3A01%40home&productKey=a1b2c3d4e5f&sdkVersion=x")
    write("bootstrap_form", "plus_space", "productKey=a1b2c3d4e5f&deviceName=lamp+0001&resources=mqtt%2Chttp")


def csvs():
    write("csv_import", "task_template", "productKey,deviceName\n")
    write("csv_import", "task_rows", f"productKey,deviceName\n{PK},lamp-0001\n{PK},lamp-0002\n")
    write("csv_import", "import_names", "deviceName\nlamp-0001\nlamp-0002\n")
    write("csv_import", "import_secrets", "\ufeffdeviceName,deviceSecret\r\nlamp-0001,"
          "pZeRIoLApMRp2i1LAD4D5FREp3yPVBwy\r\n\"lamp-0002\",\"\"\r\n")


def json_bodies():
    bodies = {
        "account": '{"id":"beta","name":"Beta Ltd","kind":"enterprise","verified_entity":"Beta Ltd"}',
        "instance": '{"id":"iot-fra-2","region":"eu-central-1","edition":"public",'
                    '"endpoint":{"host":"mqtt.example.com","tcp_port":1883,"tls_port":8883},"lifetime_days":30}',
        "product": '{"key":"a13FN5TplKq","name":"Lamp","home_instance":"iot-sh-1",'
                   '"tsl":{"properties":[{"identifier":"on","dataType":{"type":"bool"}}]}}',
        "product_patch": '{"name":"Lamp v2","published":true}',
        "devices": '["lamp-0001","lamp-0002"]',
        "task_specified": '{"product":"a13FN5TplKq","devices":["lamp-0001"],'
                          '"policy":{"kind":"specified","instance":"iot-fra-1"}}',
        "task_nearest_csv": '{"product":"a13FN5TplKq","csv":"productKey,deviceName\\na13FN5TplKq,lamp-0001\\n",'
                            '"policy":{"kind":"nearest","instances":["iot-sh-1","iot-fra-1"]}}',
        "task_cross_account": '{"product":"a13FN5TplKq","devices":["lamp-0001"],'
                              '"policy":{"kind":"specified"},"cross_account":{"account":"beta","code":"123456"}}',
    }
    for name, body in bodies.items():
        write("admin_json", name, body)


def tomls():
    for shipped in ["broker.toml", "meridian.toml"]:
        text = open(os.path.join(ROOT, "deploy", shipped)).read()
        # Each config struct is one table of the file: its body, with sub-tables re-rooted.
        for table, target in [("broker", "config_toml"), ("edge", "config_toml")]:
            lines, inside = [], False
            for line in text.splitlines():
                header = re.match(r"^\[([^\]]+)\]", line)
                if header:
                    name = header.group(1)
                    inside = name == table or name.startswith(table + ".")
                    if inside and name != table:
                        lines.append(f"[{name[len(table) + 1:]}]")
                    continue
                if inside:
                    lines.append(line)
            if lines:
                write(target, f"{shipped[:-5]}_{table}.toml", "\n".join(lines) + "\n")


if __name__ == "__main__":
    mqtt()
    device_login()
    forms()
    csvs()
    json_bodies()
    tomls()
