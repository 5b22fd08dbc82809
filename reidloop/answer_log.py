"""Append-only Parquet log of the oracle's answers (the pairs τp of DRAL Algorithm 1).

Layout: a directory of part files ``part-<seq:08d>.parquet``. ``append`` buffers records and every
``flush_every`` of them becomes one new part, written under a temporary name in the same directory
and then linked to its final name, which must not exist yet — a crash never leaves a half-written
part and never loses a flushed answer, and a second writer on the folder fails loudly instead of
replacing a part. ``question_id`` is a global sequence that continues when the directory is reopened.
``compact`` merges all parts into one; if it is interrupted, the duplicated rows are dropped on read
by ``question_id``. One writer per directory at a time.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import crashpoints
from .atomic import fsync_dir, write_parquet

SCHEMA = pa.schema([
    pa.field("question_id", pa.int64(), nullable=False),
    pa.field("query", pa.int64(), nullable=False),
    pa.field("candidate", pa.int64(), nullable=False),
    pa.field("query_path", pa.string()),
    pa.field("candidate_path", pa.string()),
    pa.field("answer", pa.int8(), nullable=False),
    pa.field("step", pa.int32(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),
    pa.field("strategy", pa.string(), nullable=False),
    pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
])
_PART = re.compile(r"^part-(\d{8})\.parquet$")


class AnswerLogError(ValueError):
    """A part file of the log is unreadable or has the wrong schema; the message names the file."""


@dataclass(frozen=True)
class AnswerRecord:
    """One answered question: is ``candidate`` the same person as ``query``? (y = ±1, Eq. 6)."""

    query: int
    candidate: int
    answer: int  # +1 same person, -1 different
    step: int  # t within the query's episode (t < Kmax)
    round: int  # query round / episode index
    strategy: str
    query_path: Optional[str] = None
    candidate_path: Optional[str] = None
    question_id: Optional[int] = None  # assigned by AnswerLog.append
    time: Optional[datetime] = None  # UTC; assigned by AnswerLog.append when None


class AnswerLog:
    """Durable, append-only answer log in ``directory`` (created if missing)."""

    def __init__(self, directory: str | os.PathLike, flush_every: int = 1) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every: {flush_every!r} must be >= 1")
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"answer log {self.directory} is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self._buffer: list[AnswerRecord] = []
        self._closed = False
        ids = self._read_parts(columns=["question_id"]).column("question_id").to_numpy()
        self._next_id = int(ids.max()) + 1 if ids.size else 0
        self._flushed = int(np.unique(ids).size)
        seqs = self._part_seqs()
        self._next_part = seqs[-1] + 1 if seqs else 0

    # ---------------------------------------------------------------- writing
    def append(self, record: AnswerRecord) -> AnswerRecord:
        """Buffer ``record`` (flushing every ``flush_every``); returns it with question_id and time set."""
        if self._closed:
            raise ValueError(f"answer log {self.directory} is closed")
        if record.answer not in (1, -1):
            raise ValueError(f"answer: {record.answer!r} must be +1 or -1")
        if record.question_id is not None and record.question_id != self._next_id:
            raise ValueError(f"question_id: {record.question_id!r} given, but the log's next id is {self._next_id}")
        if record.time is not None and record.time.tzinfo is None:
            raise ValueError(f"time: {record.time!r} must be timezone-aware (UTC)")
        record = dataclasses.replace(record, question_id=self._next_id,
                                     time=record.time or datetime.now(timezone.utc))
        self._buffer.append(record)
        self._next_id += 1
        if len(self._buffer) >= self.flush_every:
            self.flush()
        return record

    def flush(self) -> None:
        """Write the buffered records as one new part file (atomic rename); no-op when empty."""
        if not self._buffer:
            return
        self._write_atomic(_to_table(self._buffer), self._next_part)
        self._next_part += 1
        self._flushed += len(self._buffer)
        self._buffer.clear()

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> "AnswerLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def compact(self) -> Optional[Path]:
        """Merge all parts into one new part, then delete the old ones; returns the merged file.

        Interrupted after the merged file is written, the old parts remain and their rows are
        dropped on read as duplicates (same question_id). Returns None when there is nothing to merge.
        """
        self.flush()
        old = self._part_seqs()
        if len(old) <= 1:
            return None
        merged = self._write_atomic(self.read(), self._next_part)
        self._next_part += 1
        crashpoints.reach("answers/compact")
        for seq in old:
            self._part_path(seq).unlink()
        fsync_dir(self.directory)
        return merged

    # ---------------------------------------------------------------- reading
    def read(self) -> pa.Table:
        """All records, flushed parts then the unflushed buffer, one row per question_id, in id order."""
        table = self._read_parts()
        if self._buffer:
            table = pa.concat_tables([table, _to_table(self._buffer)])
        return table

    def records(self) -> list[AnswerRecord]:
        return [AnswerRecord(**row) for row in self.read().to_pylist()]

    def __len__(self) -> int:
        return self._flushed + len(self._buffer)

    def part_files(self) -> list[Path]:
        return [self._part_path(s) for s in self._part_seqs()]

    # ---------------------------------------------------------------- internals
    def _part_path(self, seq: int) -> Path:
        return self.directory / f"part-{seq:08d}.parquet"

    def _part_seqs(self) -> list[int]:
        return sorted(int(m.group(1)) for p in os.listdir(self.directory) if (m := _PART.match(p)))

    def _write_atomic(self, table: pa.Table, seq: int) -> Path:
        final = self._part_path(seq)
        write_parquet(table, final, exclusive=True)  # a second writer's part is never overwritten
        return final

    def _read_parts(self, columns: Optional[list[str]] = None) -> pa.Table:
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        tables = []
        for path in self.part_files():
            try:
                table = pq.read_table(path, columns=columns)
            except (pa.ArrowException, OSError) as e:
                raise AnswerLogError(f"answer log part {path} is unreadable: {e}") from e
            if not table.schema.equals(schema):
                raise AnswerLogError(f"answer log part {path} has schema {table.schema}, expected {schema}")
            tables.append(table)
        if not tables:
            return schema.empty_table()
        table = pa.concat_tables(tables)
        # A compaction interrupted before deleting the old parts leaves each row twice: keep one.
        _, first = np.unique(table.column("question_id").to_numpy(), return_index=True)
        return table if first.size == table.num_rows and np.all(np.diff(first) > 0) else table.take(first)


def _to_table(records: list[AnswerRecord]) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in records], schema=SCHEMA)
