"""A Forward client with TLS and the v1 handshake, written from the protocol spec with
Python's ssl, hashlib and msgpack (independent of bqforward's code).

Usage: secure_send.py --port P [--tls --ca CA.pem [--cert C.pem --key K.pem]]
       [--shared-key K --hostname H [--username U --password W]] [--events N]
Sends N events (Message mode, each with a chunk id) after the handshake and checks every ack.
Prints {"pong": [...], "acked": n} as JSON; exits 2 if authentication is refused (printing
the PONG), 3 if the TLS handshake fails, 1 on any other failure.
"""
import argparse
import hashlib
import json
import os
import socket
import ssl
import sys

import msgpack


def recv_one(sock, unpacker):
    for obj in unpacker:
        return obj
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed by server")
        unpacker.feed(data)
        for obj in unpacker:
            return obj


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--shared-key")
    p.add_argument("--hostname", default="client.local")
    p.add_argument("--username", default="")
    p.add_argument("--password", default="")
    p.add_argument("--events", type=int, default=3)
    a = p.parse_args()

    sock = socket.create_connection(("127.0.0.1", a.port), timeout=20)
    if a.tls:
        ctx = ssl.create_default_context(cafile=a.ca)
        ctx.check_hostname = False
        if a.cert:
            ctx.load_cert_chain(a.cert, a.key)
        try:
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
            sock.do_handshake()
        except (ssl.SSLError, OSError) as e:
            print(json.dumps({"tls_error": str(e)}))
            sys.exit(3)
    unpacker = msgpack.Unpacker(raw=False)
    pong = None
    if a.shared_key is not None:
        helo = recv_one(sock, unpacker)
        assert helo[0] == "HELO", helo
        nonce = helo[1]["nonce"]
        auth = helo[1]["auth"]
        nonce = nonce if isinstance(nonce, bytes) else nonce.encode()
        auth = auth if isinstance(auth, bytes) else auth.encode()
        salt = os.urandom(16)
        digest = hashlib.sha512(salt + a.hostname.encode() + nonce + a.shared_key.encode()).hexdigest()
        passwd = hashlib.sha512(auth + a.username.encode() + a.password.encode()).hexdigest() if a.username else ""
        sock.sendall(msgpack.packb(["PING", a.hostname, salt, digest, a.username, passwd], use_bin_type=True))
        pong = recv_one(sock, unpacker)
        if not pong[1]:
            print(json.dumps({"pong": pong}))
            sys.exit(2)
        expected = hashlib.sha512(salt + pong[3].encode() + nonce + a.shared_key.encode()).hexdigest()
        if pong[4] != expected:
            print(json.dumps({"pong": pong, "error": "server digest mismatch"}))
            sys.exit(1)
    acked = 0
    for i in range(a.events):
        chunk = f"secure-{i}"
        sock.sendall(msgpack.packb(["secure.test", 1700000000 + i, {"i": i}, {"chunk": chunk}]))
        answer = recv_one(sock, unpacker)
        if answer != {"ack": chunk}:
            print(json.dumps({"pong": pong, "error": f"bad ack {answer!r}"}))
            sys.exit(1)
        acked += 1
    print(json.dumps({"pong": pong, "acked": acked}))


if __name__ == "__main__":
    main()
