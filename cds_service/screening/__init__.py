"""Population screening: a Bulk FHIR export, grouped by patient on Dask, assessed by the same
record builder and assessment as the hooks, ranked into a worklist (`cds-service screen`)."""

from cds_service.screening.engine import ScreenResult, rank, screen
from cds_service.screening.export import ExportError, export_files

__all__ = ["ExportError", "ScreenResult", "export_files", "rank", "screen"]
