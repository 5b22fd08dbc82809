"""Append-only Parquet log of the oracle's answers (the pairs τp of DRAL Algorithm 1).

Layout: a directory of part files ``part-<seq:08d>.parquet``. ``append`` buffers records and every
``flush_every`` of them becomes one new part, written under a temporary name in the same directory
and then linked to its final name, which must not exist yet — a crash never leaves a half-written
part and never loses a flushed answer, and a second writer on the folder fails loudly instead of
replacing a part. ``question_id`` is a global sequence that continues when the directory is reopened.
``compact`` merges all parts into one; if it is interrupted, the duplicated rows are dropped on read
by ``question_id``. One writer per directory at a time.

Who answered, and retractions. ``annotator`` names who gave an answer ("simulated" for the simulated
oracle, the person's name in human mode, null in logs written before the column existed). The log is
append-only, so an answer a person takes back (undo, ``reidloop.annotation``) is not deleted: a
*retraction record* is appended instead — the same pair, ``answer`` 0, and ``retracts`` = the
question_id of the answer it withdraws (``retracts`` is null on every ordinary answer). A pair may be
answered again after its retraction; that answer gets a new question_id. Whoever reads the log for its
answers reads :func:`effective` of it: the table without the retracted answers and the retraction
records. Part files written before ``annotator`` and ``retracts`` existed still read (both null).
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import crashpoints
from .atomic import fsync_dir, write_parquet

# The schema of the first logs; parts written with it read as SCHEMA with ``annotator`` and ``retracts`` null.
SCHEMA_V1 = pa.schema([
    pa.field("question_id", pa.int64(), nullable=False),
    pa.field("query", pa.int64(), nullable=False),
    pa.field("candidate", pa.int64(), nullable=False),
    pa.field("query_path", pa.string()),
    pa.field("candidate_path", pa.string()),
    pa.field("answer", pa.int8(), nullable=False),  # +1 / -1; 0 on a retraction record
    pa.field("step", pa.int32(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),
    pa.field("strategy", pa.string(), nullable=False),
    pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
])
# Nullable columns added since; a part without them reads them as nulls.
ADDED_FIELDS = (
    pa.field("annotator", pa.string()),  # who answered: "simulated", a person's name; null in old logs
    pa.field("retracts", pa.int64()),  # on a retraction record: the question_id it withdraws; else null
)
SCHEMA = pa.schema(list(SCHEMA_V1) + list(ADDED_FIELDS))
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
    annotator: Optional[str] = None  # who answered ("simulated" for the simulated oracle)
    retracts: Optional[int] = None  # a retraction record (answer 0): the question_id it withdraws


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
        known = self._read_parts(columns=["question_id", "query", "candidate", "retracts"])
        ids = known.column("question_id").to_numpy()
        self._next_id = int(ids.max()) + 1 if ids.size else 0
        self._flushed = known.num_rows  # one row per question_id (_read_parts drops duplicates)
        # The answers a retraction record may still withdraw: question_id -> unordered pair.
        self._live: dict[int, tuple[int, int]] = {}
        for qid, q, c, r in zip(*(known.column(n).to_pylist() for n in known.column_names)):
            if r is None:
                self._live[qid] = (min(q, c), max(q, c))
        for r in known.column("retracts").drop_null().to_pylist():
            self._live.pop(r, None)
        seqs = self._part_seqs()
        self._next_part = seqs[-1] + 1 if seqs else 0

    # ---------------------------------------------------------------- writing
    def append(self, record: AnswerRecord) -> AnswerRecord:
        """Buffer ``record`` (flushing every ``flush_every``); returns it with question_id and time set."""
        if self._closed:
            raise ValueError(f"answer log {self.directory} is closed")
        if record.retracts is None and record.answer not in (1, -1):
            raise ValueError(f"answer: {record.answer!r} must be +1 or -1")
        if record.retracts is not None:
            self._check_retraction(record)
        if record.question_id is not None and record.question_id != self._next_id:
            raise ValueError(f"question_id: {record.question_id!r} given, but the log's next id is {self._next_id}")
        if record.time is not None and record.time.tzinfo is None:
            raise ValueError(f"time: {record.time!r} must be timezone-aware (UTC)")
        record = dataclasses.replace(record, question_id=self._next_id,
                                     time=record.time or datetime.now(timezone.utc))
        self._buffer.append(record)
        self._next_id += 1
        if record.retracts is None:
            self._live[record.question_id] = (min(record.query, record.candidate), max(record.query, record.candidate))
        else:
            del self._live[record.retracts]
        if len(self._buffer) >= self.flush_every:
            self.flush()
        return record

    def retract(self, question_id: int, *, annotator: Optional[str] = None,
                time: Optional[datetime] = None) -> AnswerRecord:
        """Append the retraction record of answer ``question_id`` (its pair, round, step and strategy; answer 0)."""
        table = self.read()
        rows = table.filter(pc.equal(table.column("question_id"), question_id)).to_pylist()
        if not rows:
            raise ValueError(f"retracts: answer log {self.directory} has no question_id {question_id}")
        row = rows[0]
        return self.append(AnswerRecord(
            query=row["query"], candidate=row["candidate"], answer=0, step=row["step"], round=row["round"],
            strategy=row["strategy"], query_path=row["query_path"], candidate_path=row["candidate_path"],
            time=time, annotator=annotator, retracts=question_id))

    def _check_retraction(self, record: AnswerRecord) -> None:
        if record.answer != 0:
            raise ValueError(f"answer: {record.answer!r} must be 0 on a retraction record (retracts "
                             f"{record.retracts})")
        pair = self._live.get(record.retracts)
        if pair is None:
            raise ValueError(f"retracts: {record.retracts!r} is no answer of answer log {self.directory} that "
                             "is still in force (unknown id, a retraction record, or retracted already)")
        if pair != (min(record.query, record.candidate), max(record.query, record.candidate)):
            raise ValueError(f"retracts: question_id {record.retracts} answered the pair {pair}, not "
                             f"({record.query}, {record.candidate})")

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
        """All records, flushed parts then the unflushed buffer, one row per question_id, in id order.

        Retraction records and the answers they retract included: read :func:`effective` of it for the answers.
        """
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
                part = pq.ParquetFile(path)
                names = set(part.schema_arrow.names)
                if names != set(SCHEMA.names) and names != set(SCHEMA_V1.names):
                    raise AnswerLogError(f"answer log part {path} has schema {part.schema_arrow}, expected {SCHEMA}")
                # a part written before ADDED_FIELDS existed lacks them: read what it has, the rest are nulls
                missing = [f for f in schema if f.name not in names]
                table = part.read(columns=[f.name for f in schema if f.name in names])
            except (pa.ArrowException, OSError) as e:
                raise AnswerLogError(f"answer log part {path} is unreadable: {e}") from e
            for f in missing:
                table = table.add_column(schema.get_field_index(f.name), f, pa.nulls(table.num_rows, f.type))
            if not table.schema.equals(schema):
                raise AnswerLogError(f"answer log part {path} has schema {part.schema_arrow}, expected {SCHEMA}")
            tables.append(table)
        if not tables:
            return schema.empty_table()
        table = pa.concat_tables(tables)
        # A compaction interrupted before deleting the old parts leaves each row twice: keep one.
        _, first = np.unique(table.column("question_id").to_numpy(), return_index=True)
        return table if first.size == table.num_rows and np.all(np.diff(first) > 0) else table.take(first)


def effective(table: pa.Table) -> pa.Table:
    """The answers in force in an answer-log table: without the retraction records and the answers they retract.

    Every reader that uses the log for its answers (resume, replay, training pairs, counts) reads this.
    Row order is kept. A table without a ``retracts`` column (a projection) is returned as it is.
    """
    if "retracts" not in table.column_names:
        return table
    retracts = table.column("retracts")
    if retracts.null_count == table.num_rows:
        return table
    keep = pc.and_(pc.is_null(retracts),
                   pc.invert(pc.is_in(table.column("question_id"), value_set=retracts.drop_null().combine_chunks())))
    return table.filter(keep)


def _to_table(records: list[AnswerRecord]) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in records], schema=SCHEMA)
