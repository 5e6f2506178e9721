#!/usr/bin/env python3
"""Two users talk through a running chat-backend, over WebSocket with the JSON subprotocol.

    python3 -m venv .venv && .venv/bin/pip install 'websockets>=13'
    .venv/bin/python scripts/demo.py [ws://127.0.0.1:8080/v1/ws]

Tokens come from `chat-backend token` (target/release/chat-backend, or CHAT_BIN), so run it
where the node's configuration (secret) is the same.
"""
import asyncio
import json
import os
import subprocess
import sys
import uuid

try:
    from websockets.asyncio.client import connect
except ImportError:  # absent, or older than 13 (Debian's package is)
    sys.exit("scripts/demo.py needs the websockets package, version 13 or newer:\n"
             "  python3 -m venv .venv && .venv/bin/pip install 'websockets>=13'\n"
             "  .venv/bin/python scripts/demo.py")

URL = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/v1/ws"
BIN = os.environ.get("CHAT_BIN", "target/release/chat-backend")


def token(user: str) -> str:
    return subprocess.run([BIN, "token", "--user", user], check=True, capture_output=True, text=True).stdout.strip()


async def open_as(user: str):
    ws = await connect(URL, additional_headers={"Authorization": f"Bearer {token(user)}"},
                       subprotocols=["chat.v1+json"])
    print(f"{user[:8]} <-", await ws.recv())  # hello
    return ws


async def main():
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    a, b = await open_as(alice), await open_as(bob)
    await a.send(json.dumps({"t": "create", "id": 1, "kind": "direct", "members": [bob]}))
    conv = json.loads(await a.recv())["conversation"]["id"]
    await a.send(json.dumps({"t": "send", "id": 2, "conv": conv, "body": "hello bob"}))
    print("alice <-", await a.recv())  # sent, after the commit
    print("bob   <-", await b.recv())  # the conversation push
    print("bob   <-", await b.recv())  # the message
    await b.send(json.dumps({"t": "history", "id": 1, "conv": conv}))
    print("bob   <-", await b.recv())
    await a.close()
    await b.close()


asyncio.run(main())
