"""Where a Bulk Data export's NDJSON files are: a folder of them, or a completion manifest.

A folder holds files named by resource type (`Observation.ndjson`, `Observation.000.ndjson`,
`Observation.001.ndjson.gz`); a manifest (FHIR Bulk Data, the JSON a completed `$export` returns)
lists `output[].type` and `url`, here local `file://` URLs or paths relative to the manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from cds_service.errors import ServiceError

SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


class ExportError(ServiceError):
    """The export cannot be read at all (no such folder, a manifest that is not one)."""

    status = 400


@dataclass(frozen=True, slots=True)
class ExportFile:
    path: str
    resource_type: str
    size: int

    @property
    def compressed(self) -> bool:
        return self.path.endswith(".gz")


def _type_of(name: str) -> str:
    return name.split(".", 1)[0]


def _from_manifest(path: Path) -> list[ExportFile]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        outputs = manifest["output"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path.name} is not a Bulk Data completion manifest") from exc
    files = []
    for entry in outputs:
        url = urlparse(str(entry.get("url", "")))
        if url.scheme not in ("", "file"):
            raise ExportError(f"only local file URLs can be screened, not {url.scheme}://")
        local = Path(unquote(url.path))
        local = local if local.is_absolute() else path.parent / local
        if not local.is_file():
            raise ExportError(f"the manifest lists {local.name}, which is not there")
        files.append(ExportFile(str(local), str(entry.get("type") or _type_of(local.name)),
                                local.stat().st_size))
    return files


def export_files(export: str | Path) -> list[ExportFile]:
    """The export's NDJSON files, in a stable order."""
    root = Path(export)
    if root.is_file():
        return _from_manifest(root)
    if not root.is_dir():
        raise ExportError(f"{export} is neither a folder of NDJSON files nor a manifest")
    files = [ExportFile(str(p), _type_of(p.name), p.stat().st_size)
             for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(SUFFIXES)]
    if not files:
        manifest = root / "manifest.json"
        if manifest.is_file():
            return _from_manifest(manifest)
        raise ExportError(f"{export} holds no .ndjson files")
    return files
