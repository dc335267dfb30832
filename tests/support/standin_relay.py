#!/usr/bin/env python3
"""A stand-in relay for tests/subscribe.rs: the relay's side of doc/relay.md
(the sockhook.relay.1 envelope, the token, the store and Sockhook-Resume),
written with Python's websockets, independently of sockhook. Besides what a
real relay does, it can send a message that breaks the contract (a duplicate
sequence number) and drop stored messages (retention), so that the
subscriber's answers to those are tested.

Usage: standin_relay.py PORT CONTROL_PORT STORE TOKEN EPOCH [CERT KEY]

It prints "ready" once both ports listen. The control port takes one JSON
object per connection and answers one:
  {"op": "publish", "hook": H, "body": TEXT, "event": E}  -> {"seq": N}
  {"op": "raw", "hook": H, "seq": N, "body": TEXT}        -> {"sent": K}
  {"op": "forget", "hook": H, "upto": N}                  -> {"kept": K}
  {"op": "state"}  -> {"clients": K, "resumes": [header or null, ...]}
"""

import asyncio
import json
import os
import ssl
import sys
import time

from websockets.asyncio.server import serve

PORT, CONTROL, STORE, TOKEN, EPOCH = sys.argv[1:6]
TLS = sys.argv[6:8]
PREFIX = "/sub/hooks/"

store = json.load(open(STORE)) if os.path.exists(STORE) else []
clients = {}  # connection -> the hook it follows, or None for every hook
resumes = []


def save():
    tmp = STORE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(store, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, STORE)


def envelope(m):
    body = m["body"].encode()
    head = {
        "epoch": EPOCH,
        "seq": m["seq"],
        "hook": m["hook"],
        "event": m.get("event", ""),
        "delivery": "standin-%d" % m["seq"],
        "content_type": "text/plain",
        "received": m["received"],
        "size": len(body),
    }
    return b"sockhook-relay 1\n" + json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def follows(topic, hook):
    return topic is None or topic == hook


async def process_request(connection, request):
    if not request.path.startswith(PREFIX):
        return connection.respond(404, "not found\n")
    if request.headers.get("Authorization") != "Bearer " + TOKEN:
        return connection.respond(403, "forbidden\n")
    return None


async def handler(connection):
    topic = connection.request.path[len(PREFIX):] or None
    resume = connection.request.headers.get("Sockhook-Resume")
    resumes.append(resume)
    if resume is not None:
        words = resume.split(" ")
        last = dict((k, int(v)) for k, v in (w.split("=") for w in words[1:]))
        if words[0] != EPOCH:
            last = {}
        for m in list(store):
            if follows(topic, m["hook"]) and m["seq"] > last.get(m["hook"], 0):
                await connection.send(envelope(m))
    clients[connection] = topic
    try:
        await connection.wait_closed()
    finally:
        clients.pop(connection, None)


async def send_all(m):
    sent = 0
    for connection, topic in list(clients.items()):
        if follows(topic, m["hook"]):
            try:
                await connection.send(envelope(m))
                sent += 1
            except Exception:
                pass
    return sent


async def control(reader, writer):
    command = json.loads(await reader.readline())
    op = command["op"]
    if op == "publish":
        seq = 1 + max([m["seq"] for m in store if m["hook"] == command["hook"]], default=0)
        m = {
            "hook": command["hook"],
            "seq": seq,
            "body": command["body"],
            "event": command.get("event", ""),
            "received": int(time.time() * 1000),
        }
        store.append(m)
        save()
        await send_all(m)
        answer = {"seq": seq}
    elif op == "raw":
        m = {
            "hook": command["hook"],
            "seq": command["seq"],
            "body": command["body"],
            "received": int(time.time() * 1000),
        }
        answer = {"sent": await send_all(m)}
    elif op == "forget":
        store[:] = [m for m in store if m["hook"] != command["hook"] or m["seq"] > command["upto"]]
        save()
        answer = {"kept": len(store)}
    else:
        answer = {"clients": len(clients), "resumes": resumes}
    writer.write(json.dumps(answer).encode() + b"\n")
    await writer.drain()
    writer.close()


async def main():
    context = None
    if TLS:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(TLS[0], TLS[1])
    async with serve(
        handler,
        "127.0.0.1",
        int(PORT),
        subprotocols=["sockhook.relay.1"],
        process_request=process_request,
        ssl=context,
        ping_interval=None,
    ):
        server = await asyncio.start_server(control, "127.0.0.1", int(CONTROL))
        async with server:
            print("ready", flush=True)
            await asyncio.Future()


asyncio.run(main())
