"""Reads what an offline W&B run wrote (RUN_DIR/wandb/offline-run-*/run-<id>.wandb): the
transaction log W&B syncs later, in LevelDB's log format (32 KiB blocks of records, each with a
7-byte header: checksum, length, type), each record a W&B protobuf `Record`."""

import glob
import json
import os
import struct

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_HEADER = struct.Struct("<IHB")  # checksum, length, type
_FULL, _LAST = 1, 4


def offline_runs(wandb_dir: str) -> list[str]:
  """The offline run directories under `wandb_dir`, oldest first."""
  return sorted(glob.glob(os.path.join(wandb_dir, "offline-run-*")))


def records(run_dir: str) -> list[wandb_internal_pb2.Record]:
  """The records of the one .wandb file in an offline run directory."""
  (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
  out, pos, parts = [], 7, b""
  while pos + _HEADER.size <= len(data):
    room = _BLOCK - pos % _BLOCK
    if room < _HEADER.size:  # a block's tail too short for a header is padding
      pos += room
      continue
    _, length, kind = _HEADER.unpack_from(data, pos)
    if length == 0 and kind == 0:
      pos += room
      continue
    parts += data[pos + _HEADER.size : pos + _HEADER.size + length]
    pos += _HEADER.size + length
    if kind in (_FULL, _LAST):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(parts)
      out.append(record)
      parts = b""
  return out


def _items(items) -> dict:
  return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def run_info(run_dir: str) -> dict:
  """{'id', 'project', 'group', 'tags', 'name', 'config', 'history' (rows), 'summary' (the
  last value of each key set outside history)} of an offline run."""
  info = {"history": [], "summary": {}, "config": {}}
  for record in records(run_dir):
    kind = record.WhichOneof("record_type")
    if kind == "run":
      run = record.run
      info.update(
        id=run.run_id,
        project=run.project,
        group=run.run_group,
        tags=list(run.tags),
        name=run.display_name,
      )
      info["config"].update(_items(run.config.update))
    elif kind == "config":
      info["config"].update(_items(record.config.update))
    elif kind == "history":
      info["history"].append(_items(record.history.item))
    elif kind == "summary":
      info["summary"].update(_items(record.summary.update))
  return info
