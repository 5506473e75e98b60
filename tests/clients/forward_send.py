"""Builds Forward protocol messages by hand with the msgpack library and sends them over
several connections, as fluentd / Fluent Bit out_forward do.

Usage: forward_send.py --port P --mode {message,forward,packed,compressed}
       [--connections C] [--events N] [--chunk K] [--ack] [--gzip-members M] [--tag T]
Each connection sends N events {"conn": c, "seq": i, ...} in messages of K events. With --ack
every message carries a chunk id and the sender waits for {"ack": id} before sending the next;
a missing or wrong ack is a failure. Prints {"sent": total, "acked": n} as JSON.
"""
import argparse
import base64
import gzip
import json
import os
import socket
import struct
import sys
import threading
import time

import msgpack


def event_time(sec, nsec):
    return msgpack.ExtType(0, struct.pack(">II", sec, nsec))


def entries(conn, start, count, pad, random_pad=False):
    base = int(time.time())

    def msg():
        # --random-pad: incompressible text, for uploads that must be large once gzipped.
        if random_pad:
            return base64.b64encode(os.urandom(pad)).decode()[:pad]
        return "x" * pad

    return [
        (event_time(base, (start + i) % 1_000_000_000),
         {"conn": conn, "seq": start + i, "msg": msg(), "level": "info"})
        for i in range(count)
    ]


def build(mode, tag, evs, chunk, members):
    option = {}
    if chunk:
        option["chunk"] = chunk
    if mode == "message":
        out = b""
        for t, rec in evs:
            msg = [tag, t, rec] + ([option] if chunk else [])
            out += msgpack.packb(msg, use_bin_type=True)
        return out
    if mode == "forward":
        msg = [tag, [[t, rec] for t, rec in evs]] + ([option] if chunk else [])
        return msgpack.packb(msg, use_bin_type=True)
    packer = msgpack.Packer(use_bin_type=True)
    raw = b"".join(packer.pack([t, rec]) for t, rec in evs)
    option["size"] = len(evs)
    if mode == "compressed":
        parts = max(1, members)
        step = max(1, len(evs) // parts)
        blobs = []
        for i in range(0, len(evs), step):
            blobs.append(gzip.compress(b"".join(packer.pack([t, r]) for t, r in evs[i:i + step])))
        raw = b"".join(blobs)
        option["compressed"] = "gzip"
    return msgpack.packb([tag, raw, option], use_bin_type=True)


def run_connection(args, conn, results):
    s = socket.create_connection(("127.0.0.1", args.port))
    s.settimeout(60)
    unpacker = msgpack.Unpacker(raw=False)
    sent = acked = 0
    results[conn] = (sent, acked)
    try:
        for start in range(0, args.events, args.chunk):
            sent, acked = send_chunk(args, conn, s, unpacker, start, sent, acked)
            results[conn] = (sent, acked)
    except (ConnectionError, OSError, Disconnected) as e:
        if not args.tolerate_disconnect:
            raise SystemExit(f"connection {conn}: {e}")
    s.close()
    results[conn] = (sent, acked)


class Disconnected(Exception):
    pass


def send_chunk(args, conn, s, unpacker, start, sent, acked):
    """Sends events [start, start+chunk) and, with --ack, waits for the ack."""
    count = min(args.chunk, args.events - start)
    chunk = base64.b64encode(os.urandom(16)).decode() if args.ack else None
    s.sendall(build(args.mode, args.tag, entries(conn, start, count, args.pad, args.random_pad), chunk,
                    args.gzip_members))
    sent += count
    if not args.ack:
        return sent, acked
    # Message mode sends one message (and gets one ack) per event.
    expected = count if args.mode == "message" else 1
    got = 0
    while got < expected:
        data = s.recv(65536)
        if not data:
            raise Disconnected(f"closed before ack of {chunk}")
        unpacker.feed(data)
        for answer in unpacker:
            if answer != {"ack": chunk}:
                raise SystemExit(f"connection {conn}: wrong ack {answer!r}, want {chunk}")
            got += 1
    return sent, acked + count


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["message", "forward", "packed", "compressed"], required=True)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--ack", action="store_true")
    p.add_argument("--gzip-members", type=int, default=1)
    p.add_argument("--pad", type=int, default=40)
    p.add_argument("--random-pad", action="store_true")
    p.add_argument("--tag", default="test.forward")
    p.add_argument("--tolerate-disconnect", action="store_true",
                   help="a closed connection ends that connection's stream instead of failing")
    args = p.parse_args()
    results = {}
    errors = []

    def worker(c):
        try:
            run_connection(args, c, results)
        except BaseException as e:  # noqa: BLE001 - report every failure
            errors.append(f"{c}: {e}")

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    summary = {"sent": sum(r[0] for r in results.values()),
               "acked": sum(r[1] for r in results.values())}
    if args.tolerate_disconnect:
        summary["acked_per_connection"] = [results.get(c, (0, 0))[1] for c in range(args.connections)]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
