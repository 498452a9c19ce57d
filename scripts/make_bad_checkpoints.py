#!/usr/bin/env python3
"""A corpus of bad rnn-dp checkpoint / model files, one per kind of damage, plus one good file.

Run (from anywhere; pure Python 3, no third-party packages):

    python3 scripts/make_bad_checkpoints.py            # (re)write the corpus
    python3 scripts/make_bad_checkpoints.py --check    # exit 1 unless the committed files match

It writes Tests/RNNTrainTests/Fixtures/bad-checkpoints/*.safetensors (each a few hundred bytes;
about 20 KB in all) and removes any other *.safetensors there, so the directory is exactly this
list. The output is deterministic: a rerun writes byte-identical files. The files are committed;
Tests/RNNTrainTests/BadCheckpointTests.swift replays every one through Checkpoint.decode (each bad
file must throw a one-line Checkpoint.Error naming the file and containing the phrase in its table;
good.safetensors must decode), and scripts/fuzz_checkpoints.sh seeds the fuzzer with them. When
you add a file here, add its name and expected phrase to that test's table.

The layout (safetensors, as rnn-dp writes it; see Sources/RNNTrain/SafeTensors.swift):
  8-byte little-endian header length N, N bytes of JSON (compact, keys sorted, padded with spaces
  so the data starts 8-aligned), then the raw little-endian F32 tensor bytes. "__metadata__" holds
  "format": "rnn-dp/1" and "checksum": "fnv1a64:<hex>", FNV-1a 64 (offset basis
  0xcbf29ce484222325, prime 0x100000001b3) over every byte after the header, hex in lowercase
  without leading zeros (Swift's String(h, radix: 16)).
"""

import json
import os
import struct
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "RNNTrainTests",
                   "Fixtures", "bad-checkpoints")

FORMAT = "rnn-dp/1"


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def checksum(data):
    return "fnv1a64:" + format(fnv1a64(data), "x")


def f32(values):
    return b"".join(struct.pack("<f", v) for v in values)


# The good file's tensors: (name, dtype, shape, raw bytes). Sorted by name, as rnn-dp writes them.
GOOD_TENSORS = [
    ("head.bias", "F32", [2], f32([0.25, -0.75])),
    ("head.weight", "F32", [2, 3], f32([1.0, -2.5, 3.125, 0.0, -0.0, 1e-3])),
    ("rnn.weight_hh_l0", "F32", [3, 3], f32([0.5 * (i - 4) for i in range(9)])),
    ("rnn.weight_ih_l0", "F32", [3, 1], f32([3.0, 1.5, -1.0])),
]
GOOD_META = {"kind": "model", "note": "bad-checkpoints corpus base file"}


def header_json(obj):
    """Compact JSON with sorted keys, as Swift's JSONSerialization(.sortedKeys) writes it."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pad(header):
    return header + b" " * ((-(8 + len(header))) % 8)


def raw(header, data=b"", length=None):
    """8-byte LE length (the header's, unless given), header bytes, data bytes."""
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def build(tensors=GOOD_TENSORS, meta=GOOD_META, fmt=FORMAT, add_checksum=True, checksum_value=None,
          entries=None, data=None, with_metadata=True):
    """A file from tensors laid out back to back. `entries` overrides/extends the header entries
    (name -> dict) after layout; `data` overrides the data region. The checksum is computed over
    the data region actually written, unless `checksum_value` is given."""
    header = {}
    blob = b""
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(payload)]}
        blob += payload
    if entries:
        header.update(entries)
    if data is not None:
        blob = data
    if with_metadata:
        m = dict(meta)
        if fmt is not None:
            m["format"] = fmt
        if add_checksum:
            m["checksum"] = checksum_value if checksum_value is not None else checksum(blob)
        header["__metadata__"] = m
    return raw(pad(header_json(header)), blob)


def header_length(b):
    return struct.unpack("<Q", b[:8])[0]


def flip(b, index, bit=0):
    b = bytearray(b)
    b[index] ^= 1 << bit
    return bytes(b)


def flip_in_header(b, needle, offset_in_needle, bit=0):
    n = header_length(b)
    i = b.index(needle, 8, 8 + n)
    return flip(b, i + offset_in_needle, bit)


def with_header_length(b, n):
    return struct.pack("<Q", n) + b[8:]


def corpus():
    good = build()
    n = header_length(good)
    files = {}

    files["good.safetensors"] = good

    # Truncations and tiny files.
    files["empty.safetensors"] = b""
    files["seven-bytes.safetensors"] = good[:7]
    files["truncated-in-length.safetensors"] = good[:3]
    files["truncated-in-header.safetensors"] = good[:8 + n // 2]
    files["truncated-in-data.safetensors"] = good[:len(good) - 6]

    # Bit flips.
    files["bitflip-data.safetensors"] = flip(good, 8 + n + 5, 3)                    # checksum mismatch
    files["bitflip-header-json.safetensors"] = flip_in_header(good, b'":{', 1)       # ':' -> ';'
    files["bitflip-header-dtype.safetensors"] = flip_in_header(good, b'"F32"', 3)    # F32 -> F33
    files["bitflip-header-format.safetensors"] = flip_in_header(good, b'"rnn-dp/1"', 8)  # rnn-dp/0
    files["bitflip-header-offset.safetensors"] = flip_in_header(good, b'"data_offsets":[0,8]', 18)  # [0,9]

    # Header length field.
    files["header-length-too-small.safetensors"] = with_header_length(good, n - 16)
    files["header-length-zero.safetensors"] = with_header_length(good, 0)
    files["header-length-2pow40.safetensors"] = with_header_length(good, 1 << 40)
    files["header-length-2pow64-minus-1.safetensors"] = with_header_length(good, (1 << 64) - 1)
    files["header-length-100MB-plus-1.safetensors"] = with_header_length(good, 100_000_001)

    # Data offsets.
    t = GOOD_TENSORS
    files["offsets-out-of-range.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [2], "data_offsets": [200, 208]}})
    files["offsets-end-before-begin.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})
    files["offsets-negative.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})
    files["offsets-overlap.safetensors"] = build(entries={
        "head.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [4, 28]}}, data=b"".join(x[3] for x in t))
    files["offsets-not-integers.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [2], "data_offsets": [0.5, 8.5]}})
    files["offsets-three-numbers.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}})

    # Dtypes (byte counts consistent with the dtype, so only the dtype is wrong).
    files["dtype-F64.safetensors"] = build(tensors=t + [("x.f64", "F64", [2], struct.pack("<2d", 1.0, 2.0))])
    files["dtype-BF16.safetensors"] = build(tensors=t + [("x.bf16", "BF16", [4], b"\x80\x3f\x00\x40\x40\x40\x80\x40")])
    files["dtype-Q4.safetensors"] = build(tensors=t + [("x.q4", "Q4", [8], b"\x12\x34\x56\x78")])
    # A valid rnn-dp file (format, correct checksum) that also carries an I32 tensor.
    files["extra-non-f32-tensor.safetensors"] = build(tensors=t + [("step", "I32", [1], struct.pack("<i", 7))])

    # Shapes.
    files["shape-mismatch.safetensors"] = build(entries={
        "head.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 32]}})
    files["shape-negative.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})
    files["shape-too-many-dims.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [1, 1, 1, 1, 1, 1, 1, 1, 2], "data_offsets": [0, 8]}})
    files["shape-product-overflow.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 8]}})
    # Element count fits in Int but count * 4 bytes does not (2^62 * 4 = 2^64).
    files["shape-byte-count-overflow.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": [1 << 62], "data_offsets": [0, 8]}})
    files["shape-not-a-list.safetensors"] = build(entries={
        "head.bias": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})

    # Header JSON.
    files["header-json-array.safetensors"] = raw(pad(b'[{"dtype":"F32"}]'), b"\0" * 8)
    files["header-leading-space.safetensors"] = raw(b" " + good[8:8 + n - 1], good[8 + n:])
    files["header-invalid-utf8.safetensors"] = raw(pad(b'{"\xff\xfe":{"dtype":"F32"}}'), b"\0" * 8)
    files["header-unterminated.safetensors"] = raw(pad(b'{"head.bias":{"dtype":"F32","shape":[2]'), b"\0" * 8)
    files["tensor-entry-not-object.safetensors"] = build(entries={"head.bias": [1, 2, 3]})
    files["tensor-entry-missing-dtype.safetensors"] = build(entries={
        "head.bias": {"shape": [2], "data_offsets": [0, 8]}})
    files["metadata-not-strings.safetensors"] = build(meta={"kind": "model", "step": 3})

    # rnn-dp's metadata: format and checksum.
    files["missing-format.safetensors"] = build(fmt=None)
    files["no-metadata.safetensors"] = build(with_metadata=False)
    files["format-rnn-dp-999.safetensors"] = build(fmt="rnn-dp/999")
    files["missing-checksum.safetensors"] = build(add_checksum=False)
    blob = b"".join(x[3] for x in t)
    files["checksum-uppercase-hex.safetensors"] = build(checksum_value=checksum(blob).upper().replace("FNV1A64", "fnv1a64"))
    files["checksum-other-algorithm.safetensors"] = build(checksum_value="crc32:%08x" % (fnv1a64(blob) & 0xFFFFFFFF))
    # Strings from the file that end up in the error message must not break it into several lines.
    files["format-with-newline.safetensors"] = build(fmt="rnn-dp/2\nrnn-dp/1")
    files["checksum-with-newline.safetensors"] = build(checksum_value=checksum(blob) + "\r\n")
    files["tensor-name-with-newline.safetensors"] = build(tensors=t + [("x\nrnn-dp: error: fake", "F64", [1], struct.pack("<d", 1.0))])
    # NEL (U+0085, a C1 control) and LINE SEPARATOR (U+2028) end lines too (Swift's isNewline,
    # Python's str.splitlines).
    files["tensor-name-with-unicode-newlines.safetensors"] = build(tensors=t + [("x\u0085y\u2028z", "F64", [1], struct.pack("<d", 1.0))])
    files["dtype-with-newline.safetensors"] = build(tensors=t + [("x.f32", "F32\n", [1], f32([1.0]))])
    # Extra bytes after the last tensor change the data region, so the stored checksum no longer matches.
    files["trailing-bytes.safetensors"] = good + b"\0\0\0\0"
    return files


def main():
    check = "--check" in sys.argv[1:]
    files = corpus()
    os.makedirs(OUT, exist_ok=True)
    existing = {f for f in os.listdir(OUT) if f.endswith(".safetensors")}
    stale = sorted(existing - set(files))
    if check:
        bad = stale + [name for name, b in files.items()
                       if not os.path.exists(os.path.join(OUT, name)) or open(os.path.join(OUT, name), "rb").read() != b]
        if bad:
            print("bad-checkpoints corpus differs from scripts/make_bad_checkpoints.py: " + ", ".join(sorted(set(bad))))
            return 1
        print(f"bad-checkpoints corpus matches ({len(files)} files)")
        return 0
    for name in stale:
        os.remove(os.path.join(OUT, name))
    for name, b in sorted(files.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(b)
    print(f"wrote {len(files)} files ({sum(len(b) for b in files.values())} bytes) to {os.path.normpath(OUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
