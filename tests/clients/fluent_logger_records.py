"""Sends given records with the PyPI fluent-logger client, as an application would.

Usage: fluent_logger_records.py --port P --tag T --events JSON
JSON is a list of [label, record] pairs, or [label, record, unix_time] triples; each is sent
as tag T.label (or T when label is ""), at unix_time when given (emit_with_time), else now.
Exits non-zero if any emit fails.
"""
import argparse
import json
import sys

from fluent import sender


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--events", required=True)
    a = p.parse_args()
    s = sender.FluentSender(a.tag, host="127.0.0.1", port=a.port)
    events = json.loads(a.events)
    for label, record, *when in events:
        if when:
            ok = s.emit_with_time(label or None, when[0], record)
        else:
            ok = s.emit(label or None, record)
        if not ok:
            print(f"emit failed: {s.last_error}", file=sys.stderr)
            sys.exit(1)
    s.close()
    print(len(events))


if __name__ == "__main__":
    main()
