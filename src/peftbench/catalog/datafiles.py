"""The rows of a ``file:`` dataset as the usual writers leave them, one reader for the plan's check and the run.

Usage:
    rows, problem = read_rows(Path("train.parquet"))     # problem: why it cannot be read, else None

.jsonl (json, pandas ``lines=True``), .json (a list of objects, pandas' default ``{column: {index: value}}``,
or JSON Lines), .csv (the csv module, pandas ``to_csv`` with its index column, pyarrow's quoted fields;
integers stay integers, as ``datasets`` reads them), .parquet (pyarrow, pandas ``to_parquet``; never
decoded as text).
"""

from __future__ import annotations

from pathlib import Path


def read_rows(path: Path) -> tuple[list[dict], str | None]:
    """The rows of a .jsonl / .json / .csv / .parquet file as their usual writers leave them (json,
    pandas' ``to_json`` in its records, lines and columns layouts, csv and ``to_csv``, pyarrow and
    ``to_parquet``), or the reason it cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        return [], f"cannot be read ({e.strerror})"
    if not raw.strip():
        return [], "the file is empty"
    if path.suffix == ".parquet":  # binary: never decoded as text
        return _parquet_rows(raw)
    try:
        text = raw.decode("utf-8-sig")  # Excel and pandas' encoding="utf-8-sig" start with a byte-order mark
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return [], f"line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
    if path.suffix == ".csv":
        return _csv_rows(text)
    if path.suffix == ".json":
        return _json_rows(text)
    return _jsonl_rows(text)


def _parquet_rows(raw: bytes) -> tuple[list[dict], str | None]:
    import io

    try:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(raw))
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        return [], f"not a readable parquet file ({type(e).__name__})"
    index = [c for c in table.column_names if c.startswith("__index_level_")]  # pandas' index, kept by to_parquet
    return table.drop(index).to_pylist(), None


def _csv_rows(text: str) -> tuple[list[dict], str | None]:
    """CSV through pandas, as ``datasets`` reads it: integers stay integers (labels 0/1 are classes,
    not the words "0" and "1"), empty cells are empty text, pandas' unnamed index column is dropped."""
    import io

    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype_backend="numpy_nullable")
    except (ValueError, pd.errors.ParserError) as e:  # EmptyDataError is a ValueError
        return [], f"not readable as CSV ({' '.join(str(e).split())[:120]})"
    frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("Unnamed: ")])
    if frame.columns.empty:
        return [], "the CSV file has no header row"
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")], None


def _plain(v):
    """numpy and pandas scalars as Python's own (labels compare and serialise as ints and strings)."""
    return v.item() if hasattr(v, "item") else v


def _json_rows(text: str) -> tuple[list[dict], str | None]:
    """A .json file: one document (a list of objects, or pandas' default ``{column: {index: value}}``),
    else JSON Lines (pandas' ``lines=True`` writes .json too)."""
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return _jsonl_rows(text)
    if isinstance(data, dict) and data and all(isinstance(c, dict) for c in data.values()):
        index = list(next(iter(data.values())))
        if all(list(c) == index for c in data.values()):
            return [{col: data[col][i] for col in data} for i in index], None
    if isinstance(data, dict):
        return [data], None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        return [], "a .json file must be a list of objects, pandas' {column: {index: value}} or JSON Lines"
    return data, None


def _jsonl_rows(text: str) -> tuple[list[dict], str | None]:
    import json

    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            return [], f"line {n}: invalid JSON ({e.msg})"
        if not isinstance(row, dict):
            return [], f"line {n}: expected a JSON object, got {type(row).__name__}"
        rows.append(row)
    return rows, None
