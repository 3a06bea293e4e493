#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/fuzz_jmespath.c: one file per distinct expression of the
JMESPath compliance suite (tests/fixtures/jmespath/*.json), holding the expression, a NUL byte and
the compact JSON of the case's `given` document. Files are named by the SHA-1 of their content,
like libFuzzer's own corpus entries, so re-running it adds nothing twice.

Usage: fuzz/make_jmespath_corpus.py [suite_dir] [corpus_dir]
"""
import hashlib
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent
suite = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests/fixtures/jmespath"
out = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else root / "fuzz/corpus/jmespath"
out.mkdir(parents=True, exist_ok=True)

seen = set()
written = 0
for path in sorted(suite.glob("*.json")):
    for group in json.loads(path.read_text(encoding="utf-8")):
        doc = json.dumps(group.get("given"), separators=(",", ":"), ensure_ascii=False)
        for case in group["cases"]:
            expr = case["expression"]
            if expr in seen:
                continue
            seen.add(expr)
            blob = expr.encode("utf-8") + b"\0" + doc.encode("utf-8")
            name = out / hashlib.sha1(blob).hexdigest()
            if not name.exists():
                name.write_bytes(blob)
                written += 1
print(f"{len(seen)} distinct expressions, {written} new files in {out}")
