"""Sends events with the PyPI fluent-logger client, as an application would.

Usage: fluent_logger_send.py (--port P | --unix PATH) --tag T --label L --count N [--nanosecond]
Exits non-zero if any emit fails.
"""
import argparse
import sys

from fluent import sender


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    p.add_argument("--unix")
    p.add_argument("--tag", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--nanosecond", action="store_true")
    a = p.parse_args()
    host = f"unix://{a.unix}" if a.unix else "127.0.0.1"
    s = sender.FluentSender(a.tag, host=host, port=a.port or 24224,
                            nanosecond_precision=a.nanosecond)
    for i in range(a.count):
        record = {
            "seq": i,
            "msg": f"event {i}",
            "pi": 3.25,
            "ok": True,
            "unicode": "caf\u00e9 \U0001F600",
            "list": [1, "a", None],
            "nested": {"k": i},
        }
        if not s.emit(a.label, record):
            print(f"emit {i} failed: {s.last_error}", file=sys.stderr)
            sys.exit(1)
    s.close()
    print(a.count)


if __name__ == "__main__":
    main()
