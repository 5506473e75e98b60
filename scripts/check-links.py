#!/usr/bin/env python3
"""Checks that every relative link in the repository's Markdown resolves: the file exists and,
for `file.md#anchor` or `#anchor`, the heading exists (GitHub's anchor rules). External links
are not fetched. Exit 1 with the broken links listed. Run by scripts/test.sh."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
skip = {".venv", "target", "node_modules", ".git", "fuzz", "demo-out"}
link = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    out = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            text = m.group(1).strip().lower()
            text = re.sub(r"[^\w\- ]", "", text)
            out.add(text.replace(" ", "-"))
    return out


broken = []
for md in sorted(root.rglob("*.md")):
    if any(part in skip for part in md.relative_to(root).parts):
        continue
    in_code = False
    for n, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        for target in link.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            where = f"{md.relative_to(root)}:{n}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where} (no such heading)")
if broken:
    print("broken links:", *broken, sep="\n  ")
    sys.exit(1)
print("links: ok")
