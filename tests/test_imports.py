"""Historical imports, the reading and mapping half (pure): CSV rows into exact CleverTap records, typed by a
schema as CleverTap's uploader takes it, every bad row named by its line and column."""

from __future__ import annotations

import io
from typing import Any

import pytest

from pipeline.errors import InputError
from pipeline.imports import (
    CsvMapper,
    CsvSpec,
    RowError,
    guessed,
    load_columns,
    load_schema,
    parse_time,
    read_csv,
)


def mapped(text: str, spec: CsvSpec) -> tuple[list[dict[str, Any]], list[RowError]]:
    mapper, records, errors = CsvMapper(spec), [], []
    for line, row in read_csv(io.BytesIO(text.encode("utf-8"))):
        record, problems = mapper.record(line, row)
        if record is not None:
            records.append(record)
        errors += problems
    return records, errors


ORDERS = (
    "\ufeffemail,ts,order_id,amount,paid_on,gift,qty,note\r\n"  # a BOM, CRLF line ends
    'ann@x.com,2025-03-01T10:00:00Z,A-1,19.90,2025-03-01T10:05:00+01:00,false,2,"two lines,\nquoted"\r\n'
    "bob@x.com,1740823200000,A-2,5,1740823500,yes,1,\r\n"
    "\r\n"  # a trailing empty line
)


def test_orders_with_a_schema_become_exact_charged_records() -> None:
    schema = load_schema(
        '{"amount": "Float", "paid_on": "Date", "gift": "Boolean", "qty": "Integer", "order_id": "String"}',
        "schema.json",
    )
    columns = load_columns('{"amount": "Amount", "order_id": "Charged ID"}', "columns.json")
    records, errors = mapped(ORDERS, CsvSpec("event", event="Charged", columns=columns, schema=schema))
    assert errors == []
    assert records == [
        {"type": "event", "identity": "ann@x.com", "ts": 1740823200, "evtName": "Charged",
         "evtData": {"Charged ID": "A-1", "Amount": 19.9, "paid_on": "$D_1740819900", "gift": False, "qty": 2,
                     "note": "two lines,\nquoted"}},
        {"type": "event", "identity": "bob@x.com", "ts": 1740823200, "evtName": "Charged",
         "evtData": {"Charged ID": "A-2", "Amount": 5.0, "paid_on": "$D_1740823500", "gift": True, "qty": 1}},
    ]  # fmt: skip


def test_a_profile_csv_with_a_multi_value_column() -> None:
    text = 'objectId,Name,Interests,zip,score\n__g1,Ann,"shoes, hats ,",007,3.5\n'
    records, errors = mapped(text, CsvSpec("profile", schema={"Interests": "String[]"}))
    assert errors == []
    assert records == [
        {"type": "profile", "objectId": "__g1",
         "profileData": {"Name": "Ann", "Interests": {"$add": ["shoes", "hats"]}, "zip": "007",
                         "score": 3.5}},
    ]  # fmt: skip


def test_bad_rows_are_named_by_line_and_column_and_the_rest_go_on() -> None:
    text = (
        "email,ts,evtName,qty,when\n"
        "ann@x.com,2025-03-01T10:00:00,Viewed,1,\n"  # line 2: a time without a zone
        ",1740823200,Viewed,x,\n"  # line 3: no identity; qty not an Integer
        'bob@x.com,1740823200,"App Launched",2,\n'  # line 4: a reserved event name
        "cid@x.com,1740823200,Viewed,3,soon\n"  # line 5: not a Date
        "dan@x.com,1740823200,Viewed,4,,extra\n"  # line 6: a cell more than the header
        "eve@x.com,1740823200,Viewed,5,1740823200\n"  # line 7: fine
    )
    records, errors = mapped(text, CsvSpec("event", schema={"qty": "Integer", "when": "Date"}))
    assert [r["identity"] for r in records] == ["eve@x.com"]
    shown = [str(e) for e in errors]
    assert shown[0].startswith("line 2, column 'ts': '2025-03-01T10:00:00' has no zone")
    assert "line 3: no identity" in shown[1] and "line 3, column 'qty': 'x' is not an Integer" in shown[2]
    assert "line 4, column 'evtName'" in shown[3] and "reserved" in shown[3]
    assert "line 5, column 'when': 'soon' is not a time" in shown[4]
    assert shown[5] == "line 6: 1 more cells than the header has columns"
    assert len(errors) == 6


def test_a_header_renamed_to_identity_and_the_event_name_checks() -> None:
    records, _ = mapped(
        "customer,ts\nann@x.com,1\n", CsvSpec("event", event="Signed Up", columns={"customer": "identity"})
    )
    assert records == [
        {"type": "event", "identity": "ann@x.com", "ts": 1, "evtName": "Signed Up", "evtData": {}}
    ]
    with pytest.raises(InputError, match=r"--event: event name 'Bad\.Name'"):
        CsvMapper(CsvSpec("event", event="Bad.Name"))
    _, errors = mapped("email,ts\nann@x.com,1\n", CsvSpec("event"))
    assert str(errors[0]) == "line 2, column 'evtName': no event name: an evtName column or --event"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "the file is empty"),
        ("a,a\n1,2\n", "column 'a' appears twice"),
    ],
)
def test_a_file_that_is_not_a_csv_is_refused_whole(text: str, why: str) -> None:
    with pytest.raises(InputError, match=why):
        list(read_csv(io.BytesIO(text.encode())))


def test_schema_and_columns_files_are_checked() -> None:
    with pytest.raises(InputError, match="column 'x': type 'Number' is not one of Float"):
        load_schema('{"x": "Number"}', "s.json")
    with pytest.raises(InputError, match=r"s\.json: not JSON"):
        load_schema("{", "s.json")
    with pytest.raises(InputError, match="header 'h': the key must be"):
        load_columns('{"h": ""}', "c.json")


def test_values_and_times_without_a_schema() -> None:
    assert [guessed(t) for t in ("12", "-3", "1.5", "007", "TRUE", "x", "1e5", "99999999999999999999")] == [
        12, -3, 1.5, "007", True, "x", "1e5", "99999999999999999999",
    ]  # fmt: skip
    assert parse_time("1740823200") == (1740823200, None)
    assert parse_time("1740823200123") == (1740823200, None)  # milliseconds
    assert parse_time("2025-03-01T11:00:00+01:00") == (1740823200, None)
    assert parse_time("yesterday")[1] is not None


def test_ready_records_are_checked_by_the_same_limits() -> None:
    from pipeline.imports import check_record

    good = {
        "type": "event",
        "identity": "a@x.com",
        "ts": 1740823200,
        "evtName": "Charged",
        "evtData": {"Amount": 1},
    }
    assert check_record(good) == []
    assert check_record({"type": "profile", "objectId": "g1", "profileData": {"Tags": {"$add": ["a"]}}}) == []
    assert check_record([]) == ["a record must be a JSON object"]
    assert check_record({"type": "x"})[0].startswith("type: must be event or profile")
    reasons = check_record(
        {"type": "event", "identity": "", "evtName": "App Launched", "evtData": {"n": {"a": 1}}}
    )
    assert [r.split(":")[0] for r in reasons] == [
        "no identity",
        "event name 'App Launched'",
        "ts",
        "evtData.n",
    ]
    assert check_record({**good, "evtData": {"k" * 121: 1}})[0].endswith("at most 120")


def test_a_dry_run_counts_everything_and_warns_of_the_dashboards_year() -> None:
    from pipeline.imports import csv_records, ready_records, summarise

    now = 1764547200  # 2025-12-01
    text = "email,ts,evtName\na@x.com,1740823200,Viewed\nb@x.com,1600000000,Viewed\n,1,Viewed\n"
    summary = summarise(csv_records(io.BytesIO(text.encode()), CsvSpec("event")), now, show=1)
    assert summary.as_dict() == {"rows": 3, "records": 2, "refused": 1, "older_than_a_year": 1}
    assert len(summary.first) == 1 and str(summary.errors[0]).startswith("line 4: no identity")
    lines = (
        b'{"type": "event", "identity": "a@x.com", "ts": 1764500000, "evtName": "E", "evtData": {}}\n'
        b"\n"
        b"{not json\n"
        b'{"type": "profile", "identity": "", "profileData": {}}\n'
    )
    summary = summarise(ready_records(io.BytesIO(lines)), now)
    assert summary.as_dict() == {"rows": 3, "records": 1, "refused": 2, "older_than_a_year": 0}
    assert [e.line for e in summary.errors] == [3, 4] and "not JSON" in summary.errors[0].reason


def test_a_row_that_is_not_utf8_is_named_by_its_own_line_and_the_rest_go_on() -> None:
    good = "".join(f"a{i}@x.com,{1700000000 + i},{i}\n" for i in range(3000)).encode()
    data = b"email,ts,x\n" + good + b"bad@x.com,1700000000,\xff\xfe\nz@x.com,1700000001,ok\n"
    mapper, errors, records = CsvMapper(CsvSpec("event", "E")), [], 0
    for line, row in read_csv(io.BytesIO(data)):
        record, problems = mapper.record(line, row)
        records += record is not None
        errors += problems
    assert records == 3001 and [str(e) for e in errors] == [
        "line 3002: not UTF-8 text (save the file as UTF-8)"
    ]

    with pytest.raises(InputError, match="line 1: the header row is not UTF-8"):
        list(read_csv(io.BytesIO("Pr\u00e9nom,email\nA,a@x.com\n".encode("latin-1"))))
