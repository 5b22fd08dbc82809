"""AnswerLog: durable part files, continuing ids, compaction, and loud failures on bad parts."""
from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reidloop.answer_log import SCHEMA, SCHEMA_V1, AnswerLog, AnswerLogError, AnswerRecord, effective


def rec(i: int, answer: int = 1, **kw) -> AnswerRecord:
    return AnswerRecord(query=i, candidate=i + 100, answer=answer, step=i % 3, round=i // 3,
                        strategy="dral", query_path=f"q{i}.jpg", **kw)


def parts(d) -> list[str]:
    return sorted(p for p in os.listdir(d) if p.startswith("part-"))


def test_parts_written_per_flush_every(tmp_path):
    log = AnswerLog(tmp_path, flush_every=3)
    for i in range(7):
        log.append(rec(i))
    assert parts(tmp_path) == ["part-00000000.parquet", "part-00000001.parquet"]
    assert pq.read_table(tmp_path / "part-00000001.parquet").column("question_id").to_pylist() == [3, 4, 5]
    assert len(log) == 7 and log.read().num_rows == 7  # the unflushed 7th is readable in memory
    log.close()
    assert parts(tmp_path)[-1] == "part-00000002.parquet"
    with pytest.raises(ValueError, match="closed"):
        log.append(rec(8))


def test_flush_every_one_is_durable_before_return(tmp_path):
    log = AnswerLog(tmp_path)
    out = log.append(rec(0, answer=-1))
    assert out.question_id == 0 and out.time.tzinfo is not None
    assert AnswerLog(tmp_path).records() == [out]  # a second reader sees it without any flush/close


def test_reopen_continues_question_id_and_parts(tmp_path):
    with AnswerLog(tmp_path, flush_every=2) as log:
        for i in range(5):
            log.append(rec(i))
    with AnswerLog(tmp_path, flush_every=2) as log:
        assert len(log) == 5
        assert log.append(rec(5)).question_id == 5
    t = AnswerLog(tmp_path).read()
    assert t.column("question_id").to_pylist() == list(range(6))
    assert t.column("query").to_pylist() == list(range(6))
    assert parts(tmp_path)[-1] == "part-00000003.parquet"


def test_records_roundtrip_and_schema_types(tmp_path):
    when = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=timezone.utc)
    with AnswerLog(tmp_path) as log:
        a = log.append(rec(0, time=when))
        b = log.append(dataclasses.replace(rec(1, answer=-1), query_path=None))
    assert AnswerLog(tmp_path).records() == [a, b]
    t = AnswerLog(tmp_path).read()
    assert t.schema.equals(SCHEMA)
    assert t.schema.field("answer").type == pa.int8()
    assert t.schema.field("step").type == pa.int32() and t.schema.field("round").type == pa.int32()
    assert t.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert t.column("candidate_path").null_count == 2
    assert t.column("answer").to_pylist() == [1, -1]


def test_bad_records_rejected(tmp_path):
    log = AnswerLog(tmp_path)
    with pytest.raises(ValueError, match="answer"):
        log.append(rec(0, answer=0))
    with pytest.raises(ValueError, match="question_id"):
        log.append(rec(0, question_id=7))
    with pytest.raises(ValueError, match="timezone"):
        log.append(rec(0, time=datetime(2026, 1, 1)))
    assert len(log) == 0 and parts(tmp_path) == []


def test_compact_is_equivalent_and_continues(tmp_path):
    log = AnswerLog(tmp_path)
    for i in range(6):
        log.append(rec(i, answer=1 if i % 2 else -1))
    before = log.read()
    merged = log.compact()
    assert parts(tmp_path) == [merged.name] == ["part-00000006.parquet"]
    assert log.read().equals(before)
    assert log.append(rec(6)).question_id == 6
    assert AnswerLog(tmp_path).read().column("question_id").to_pylist() == list(range(7))


def test_interrupted_compaction_drops_duplicates(tmp_path):
    log = AnswerLog(tmp_path)
    for i in range(4):
        log.append(rec(i))
    before = log.read()
    pq.write_table(before, tmp_path / "part-00000004.parquet")  # merged written, old parts not yet removed
    reopened = AnswerLog(tmp_path)
    assert reopened.read().equals(before) and len(reopened) == 4
    assert reopened.append(rec(4)).question_id == 4


def test_tmp_leftover_ignored(tmp_path):
    with AnswerLog(tmp_path) as log:
        log.append(rec(0))
    (tmp_path / ".part-00000001.parquet.tmp-999").write_bytes(b"half a parquet fi")
    log = AnswerLog(tmp_path)
    assert len(log) == 1 and log.read().num_rows == 1
    assert log.append(rec(1)).question_id == 1


def test_corrupt_part_raises_naming_file(tmp_path):
    with AnswerLog(tmp_path) as log:
        log.append(rec(0))
        log.append(rec(1))
    bad = tmp_path / "part-00000001.parquet"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(AnswerLogError, match="part-00000001.parquet"):
        AnswerLog(tmp_path)


def test_foreign_schema_part_raises_naming_file(tmp_path):
    pq.write_table(pa.table({"question_id": [0], "x": [1]}), tmp_path / "part-00000000.parquet")
    with pytest.raises(AnswerLogError, match="part-00000000.parquet"):
        AnswerLog(tmp_path).read()


def test_a_second_writer_fails_loudly_instead_of_replacing_a_part(tmp_path):
    first, second = AnswerLog(tmp_path), AnswerLog(tmp_path)  # both opened on the same (empty) folder
    kept = first.append(rec(0))
    with pytest.raises(FileExistsError, match="another process"):
        second.append(rec(1))
    assert AnswerLog(tmp_path).records() == [kept]  # the first writer's answer is intact
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_retraction_record_withdraws_one_answer_in_force(tmp_path):
    log = AnswerLog(tmp_path)
    for i in range(3):
        log.append(rec(i, annotator="ann"))
    r = log.retract(1, annotator="ann")
    assert (r.question_id, r.query, r.candidate, r.answer, r.round, r.step, r.retracts) == (3, 1, 101, 0, 0, 1, 1)
    log.append(rec(1, answer=-1, annotator="bob"))  # the pair answered again: a new question_id
    for bad, why in [(dataclasses.replace(rec(0), answer=1, retracts=0), "must be 0 on a retraction"),
                     (dataclasses.replace(rec(1), answer=0, retracts=1), "still in force"),  # retracted already
                     (dataclasses.replace(rec(1), answer=0, retracts=3), "still in force"),  # a retraction record
                     (dataclasses.replace(rec(0), answer=0, retracts=9), "still in force"),  # unknown id
                     (dataclasses.replace(rec(2), answer=0, retracts=0), "answered the pair")]:
        with pytest.raises(ValueError, match=why):
            log.append(bad)
    reopened = AnswerLog(tmp_path)  # what may be retracted is rebuilt from the parts
    with pytest.raises(ValueError, match="still in force"):
        reopened.retract(1)
    t = reopened.read()
    assert t.column("question_id").to_pylist() == [0, 1, 2, 3, 4]
    kept = effective(t)
    assert kept.column("question_id").to_pylist() == [0, 2, 4] and kept.column("answer").to_pylist() == [1, 1, -1]
    assert kept.column("annotator").to_pylist() == ["ann", "ann", "bob"]
    assert effective(kept).equals(kept) and effective(t.select(["question_id", "answer"])).num_rows == 5


def test_a_part_written_before_annotator_and_retracts_still_reads(tmp_path):
    when = datetime(2025, 5, 1, tzinfo=timezone.utc)
    old = pa.Table.from_pylist([{**dataclasses.asdict(rec(i)), "question_id": i, "time": when} for i in range(2)],
                               schema=SCHEMA_V1)
    pq.write_table(old, tmp_path / "part-00000000.parquet")
    log = AnswerLog(tmp_path)
    assert len(log) == 2 and log.read().schema.equals(SCHEMA)
    assert log.records()[0] == dataclasses.replace(rec(0), question_id=0, time=when)  # annotator, retracts: None
    log.append(rec(2, annotator="ann"))
    log.retract(0, annotator="ann")  # an old answer can be retracted too
    assert effective(log.read()).column("question_id").to_pylist() == [1, 2]
    log.compact()  # one part in the new schema
    assert pq.read_table(log.part_files()[0]).schema.equals(SCHEMA)
    assert AnswerLog(tmp_path).read().column("annotator").to_pylist() == [None, None, "ann", "ann"]
