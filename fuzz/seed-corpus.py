#!/usr/bin/env python3
"""Builds each fuzz target's seed corpus from the conformance testdata.

    fuzz/seed-corpus.py [TESTDATA_DIR]   (default $RINGSTAR_TESTDATA, which test.sh
                                          sets, else ../shared/testdata/estargz)

Writes fuzz/corpus/<target>/: blob tails for `footer`, TOC JSON for `toc`,
the TOC member's tar for `tar_header`, whole small blobs for `layer_open`,
TOC JSON plus the payload before it for `layer_toc`, this machine's
small ELF programs for `exec_file`.
"""
import gzip
import os
import struct
import sys
import zlib

here = os.path.dirname(os.path.abspath(__file__))
src = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RINGSTAR_TESTDATA")
       or os.path.join(here, "..", "..", "shared", "testdata", "estargz"))
corpus = os.path.join(here, "corpus")


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


for fn in sorted(os.listdir(src)):
    if not fn.endswith(".blob"):
        continue
    name = fn[:-5]
    blob = open(os.path.join(src, fn), "rb").read()
    put("footer", name, blob[-64:])
    if len(blob) < 128 * 1024:
        put("layer_open", name, blob)
    for size in (51, 47):
        foot = blob[-size:]
        try:
            off = int(foot[size - 35:size - 19], 16)
        except ValueError:
            continue
        if off >= len(blob):
            continue
        try:
            tar = zlib.decompressobj(31).decompress(blob[off:])
        except zlib.error:
            continue
        put("tar_header", name, tar)
        json_len = int(tar[124:136].rstrip(b"\0 ") or b"0", 8)
        put("toc", name, tar[512:512 + json_len])
        # layer_toc: flags, LE32 JSON length, JSON, the payload before the TOC.
        toc_json = tar[512:512 + json_len]
        put("layer_toc", name, b"\0" + struct.pack("<I", len(toc_json)) + toc_json + blob[:off])
        break
    if blob[-8:] == b"GnUlInUx":
        toc_off, toc_len, raw_len = struct.unpack("<QQQ", blob[-40:-16])
        try:
            import subprocess
            toc_json = subprocess.run(["zstd", "-dc"], input=blob[toc_off:toc_off + toc_len],
                                      capture_output=True, check=True).stdout
            put("layer_toc", name, b"\1" + struct.pack("<I", len(toc_json)) + toc_json + blob[:toc_off - 8])
        except (OSError, subprocess.CalledProcessError):
            pass
    # A real member for chunk_inflate: LE64 size, LE64 inner offset, a
    # compression byte (bit 0: zstd), then the member.
    head = blob[:256]
    put("chunk_inflate", name, struct.pack("<QQB", len(head) - 16, 16, 0) + gzip.compress(head))
# exec_file: this machine's own small programs and loader (a cut byte
# first, placing the hole), and a script.
for path in ["/usr/bin/true", "/usr/bin/env", "/lib64/ld-linux-x86-64.so.2"]:
    try:
        with open(path, "rb") as f:
            elf = f.read()
    except OSError:
        continue
    if len(elf) <= 256 << 10:
        put("exec_file", os.path.basename(path), b"\x40" + elf)
put("exec_file", "script", b"\x80#!/usr/bin/env python3\nprint()\n")
print("seed corpus in", corpus)
