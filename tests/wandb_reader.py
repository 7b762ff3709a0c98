"""A small reader for W&B offline run files (wandb ships no Python reader for them).

Format: a 7-byte header, then LevelDB-log framing in 32 KiB blocks; each chunk
is crc32c (4 bytes), length (2, little-endian), type (1: full, 2: first,
3: middle, 4: last) and payload. A record is a wandb_internal_pb2.Record.
"""

from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    pos, pending, records = HEADER, b"", []
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer: too small for a chunk header, zero padding
            pos += room
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            break
        if kind in (FULL, FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history_keys(path) -> set[str]:
    """Every key logged to the run's history."""
    keys = set()
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                keys.add(item.key or "/".join(item.nested_key))
    return keys


def run_file(output_dir) -> Path:
    files = sorted(Path(output_dir, "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, f"no W&B offline run file under {output_dir}/wandb"
    return files[-1]
