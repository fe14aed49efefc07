"""The worklist on disk: CSV or JSON lines, readable by its owner only (it holds PHI)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO

import orjson

from cds_service.screening.assess import evidence_text

CSV_COLUMNS = ("rank", "tier", "patient_id", "mrn", "modifiable_factors", "pth_multiple",
               "scope", "calciphylaxis", "pth_overdue", "warnings", "factors", "evidence",
               "actions")


def private_file(path: str | Path) -> IO[str]:
    """Open for writing with owner-only permissions (0600), also when the file existed."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    return os.fdopen(descriptor, "w", encoding="utf-8", newline="")


def csv_row(row: dict) -> dict:
    """One worklist row flattened: factors by label, evidence and actions per factor."""
    factors = row["factors"]
    return {
        **{k: row[k] for k in ("rank", "tier", "patient_id", "mrn", "modifiable_factors",
                               "scope", "calciphylaxis", "pth_overdue")},
        "pth_multiple": "" if row["pth_multiple"] is None else f"{row['pth_multiple']:.2f}",
        "warnings": "; ".join(row["warnings"]),
        "factors": "; ".join(f["label"] for f in factors),
        "evidence": " | ".join(f"{f['label']}: " + "; ".join(evidence_text(e)
                                                             for e in f["evidence"])
                               for f in factors),
        "actions": " | ".join(f"{f['label']}: {f['action']}" for f in factors if f["action"]),
    }


def write_worklist(rows: list[dict], path: str | Path, fmt: str = "csv") -> None:
    with private_file(path) as out:
        if fmt == "jsonl":
            for row in rows:
                out.write(orjson.dumps(row).decode() + "\n")
            return
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_row(row) for row in rows)
