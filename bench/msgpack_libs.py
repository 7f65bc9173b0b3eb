"""
Which MessagePack library: ``ormsgpack`` against the reference ``msgpack``, on the
messages the ASP.NET Core hub protocol carries, with the options it needs (timestamp
extension to aware datetimes, maps with any keys, bin for bytes).

Both are installed, at pinned versions, into their own virtualenv,
``bench/.msgpack-venv`` (created on first use, git-ignored); the measurement runs
there, each library decoding and encoding the same values, medians of interleaved
repeats.  The reasons for the choice are in README.rst (MessagePack).

    python bench/msgpack_libs.py [--smoke] [--n MESSAGES]
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from typing import Any

from _common import BENCH_DIR, common_args, ratio, table, write_results

NAME = "msgpack_libs"
VENV = BENCH_DIR / ".msgpack-venv"
#: The versions compared (the newest of each on PyPI when this was written).
PINS = ("msgpack==1.2.4", "ormsgpack==1.13.1")

CHILD = r"""
import datetime, json, statistics, sys, time
import msgpack, ormsgpack

n, repeat = int(sys.argv[1]), int(sys.argv[2])
UTC = datetime.timezone.utc
TICK = [1, {}, None, "tick", [{"Symbol": "BTCUSD", "Price": 43123.5, "Size": 0.25,
        "Side": "Buy", "Ts": datetime.datetime(2026, 12, 1, 9, 0, 1, 500000, tzinfo=UTC)}]]
BOOK = [1, {}, None, "book", [{"Bids": [[43120.0 + i, 0.5 + i] for i in range(20)],
        "Asks": [[43130.0 + i, 0.25 * i] for i in range(20)], "Seq": 2**40}]]
RESULT = [3, {}, "17", 3, {"Id": 42, "Blob": bytes(range(256)) * 4, "Map": {1: "a", 2: "b"}}]
SHAPES = {"tick invocation": TICK, "order book": BOOK, "result with bin": RESULT}

ORM_UNPACK = ormsgpack.OPT_DATETIME_AS_TIMESTAMP_EXT | ormsgpack.OPT_NON_STR_KEYS
ORM_PACK = ORM_UNPACK | ormsgpack.OPT_NAIVE_UTC
packer = msgpack.Packer(datetime=True)

LIBS = {
    "msgpack": (
        lambda b: msgpack.unpackb(b, timestamp=3, strict_map_key=False),
        packer.pack,
    ),
    "ormsgpack": (
        lambda b: ormsgpack.unpackb(b, option=ORM_UNPACK, ext_hook=lambda c, d: (c, d)),
        lambda v: ormsgpack.packb(v, option=ORM_PACK),
    ),
}

def capabilities(unpack, pack):
    out = {}
    stamp = unpack(bytes.fromhex("d6ff58ec1c80"))
    out["timestamp -> aware datetime"] = getattr(stamp, "tzinfo", None) is not None
    out["int map keys"] = unpack(bytes.fromhex("8201a16102a162")) == {1: "a", 2: "b"}
    out["uint64 max"] = unpack(pack(2**64 - 1)) == 2**64 - 1
    out["bytes as bin"] = pack(b"\x01") == b"\xc4\x01\x01"
    april = datetime.datetime(2017, 4, 11, tzinfo=UTC)
    out["datetime -> timestamp"] = pack(april) == bytes.fromhex("d6ff58ec1c80")
    return out

def timed(fn, arg):
    start = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return (time.perf_counter() - start) / n * 1e9

rows = {}
for shape, value in SHAPES.items():
    body = ormsgpack.packb(value, option=ORM_PACK)
    runs = {lib: {"decode": [], "encode": []} for lib in LIBS}
    for _ in range(repeat):  # interleaved
        for lib, (unpack, pack) in LIBS.items():
            runs[lib]["decode"].append(timed(unpack, body))
            runs[lib]["encode"].append(timed(pack, value))
    rows[shape] = {
        "bytes": len(body),
        **{f"{lib}_{op}_ns": statistics.median(v)
           for lib, ops in runs.items() for op, v in ops.items()},
    }
result = {
    "versions": {"msgpack": msgpack.version, "ormsgpack": ormsgpack.__version__},
    "capabilities": {lib: capabilities(*fns) for lib, fns in LIBS.items()},
    "shapes": rows,
}
print(json.dumps(result, default=str))
"""


def ensure_venv() -> tuple[str | None, str]:
    """The venv's interpreter with both libraries, or ``(None, why not)``."""
    python = VENV / "bin" / "python"
    stamp = VENV / "requirements.txt"
    wanted = "\n".join(PINS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python), "ok"
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    except Exception as e:
        return None, f"could not create {VENV}: {e}"
    r = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        tail = [line for line in r.stderr.splitlines() if "WARNING" not in line][-3:]
        return None, "pip install failed: " + " | ".join(tail)
    stamp.write_text(wanted)
    return str(python), "ok"


def main() -> int:
    args = common_args(__doc__.split("\n\n")[0]).parse_args()
    n = args.n or (2_000 if args.smoke else 100_000)
    repeat = 1 if args.smoke else 5
    python, detail = ensure_venv()
    if python is None:
        print(f"cannot measure: {detail}")
        write_results(NAME, {"smoke": args.smoke, "error": detail}, args.json)
        return 1
    r = subprocess.run(
        [python, "-c", CHILD, str(n), str(repeat)], capture_output=True, text=True, timeout=900
    )
    if r.returncode != 0:
        error = (r.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"measurement failed: {error}")
        write_results(NAME, {"smoke": args.smoke, "error": error}, args.json)
        return 1
    data: dict[str, Any] = json.loads(r.stdout)
    rows = []
    for shape, row in data["shapes"].items():
        rows.append(
            (
                shape,
                row["bytes"],
                row["msgpack_decode_ns"],
                row["ormsgpack_decode_ns"],
                ratio(row["msgpack_decode_ns"], row["ormsgpack_decode_ns"]),
                row["msgpack_encode_ns"],
                row["ormsgpack_encode_ns"],
                ratio(row["msgpack_encode_ns"], row["ormsgpack_encode_ns"]),
            )
        )
    headers = [
        "message",
        "bytes",
        "msgpack dec ns",
        "ormsgpack dec ns",
        "dec x",
        "msgpack enc ns",
        "ormsgpack enc ns",
        "enc x",
    ]
    print(f"{n:,} messages per run, median of {repeat}; versions {data['versions']}")
    print(table(headers, rows))
    for lib, caps in data["capabilities"].items():
        missing = [name for name, ok in caps.items() if not ok]
        print(
            f"{lib}: "
            + ("everything the hub protocol needs" if not missing else f"lacks {missing}")
        )
    path = write_results(
        NAME, {"smoke": args.smoke, "messages": n, "repeat": repeat, **data}, args.json
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
