"""The screen on Dask: two passes over byte-range blocks, a shuffle by patient, assessment.

1. Blocks of Patient, Medication, Condition, Procedure and Encounter files: the export's patient
   ids, its Medication resources, and the candidates (patients whose data name a concept that can
   put them on the worklist; prefilter.py). Task results are sets of ids: small.
2. Blocks of every file the record builder reads: each keeps only the candidates' lines, grouped
   by patient inside the block, and counts the rest. Dask's task shuffle (bag groupby) brings
   each patient's lines together on one worker, where the same record builder and assessment as
   the hooks run; only outcomes (a worklist row when a card would show) come back.

Blocks are read as bytes, never decoded whole, so a worker's memory is bounded by the block size
(plus its share of the candidates' lines), not by the export's size. The embedded default is a
local cluster of one single-threaded worker process per core (the synchronous scheduler for small
exports); `scheduler` names an existing cluster's address, where the same graph runs unchanged
(the workers must see the export's files at the same paths and have this package installed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from operator import itemgetter

import dask
import dask.bag as db
from dask.bytes import read_bytes

from cds_service.clinical.record_builder import RESOURCE_TYPES
from cds_service.fhir.warmup import warm_up
from cds_service.screening.assess import Outcome, assess_patient, clinical
from cds_service.screening.export import ExportFile, export_files
from cds_service.screening.prefilter import (
    SCOPE_TYPES,
    Counts,
    ScopeTokens,
    lab_code_pattern,
    read_medications,
    read_patients,
    scope_candidates,
    select_lines,
    unpacked,
)

BLOCK_SIZE = 32 * 2**20  # bytes per partition: bounds a worker's memory, keeps tasks ~1 s
# Below this, starting worker processes costs more than the screen: run in this process.
SMALL_EXPORT = 64 * 2**20
TIER_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass
class ScreenResult:
    as_of: datetime
    rows: list[dict]  # ranked worklist
    outcomes: list[Outcome]  # every assessed candidate (rows included), for the report
    counts: Counts
    seconds: float
    scheduler: str
    partitions: int
    candidates: int
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def in_scope(self) -> int:
        return sum(o.in_scope for o in self.outcomes)

    def summary(self) -> str:
        """The closing line: counts only, no identifiers."""
        c = self.counts
        tiers = {t: sum(r["tier"] == t for r in self.rows) for t in TIER_ORDER}
        return (f"screened {c.patients:,} patients ({c.lines:,} resources) as of "
                f"{self.as_of.isoformat()}: {self.in_scope:,} in scope, {len(self.rows):,} "
                f"flagged (critical {tiers['critical']}, warning {tiers['warning']}, info "
                f"{tiers['info']}); lines skipped: {c.unreadable} unreadable, "
                f"{c.unknown_patient} of unknown patients, {c.no_patient_reference} without a "
                f"patient, {c.entered_in_error} entered in error; {self.seconds:.1f} s")


def rank(rows: list[dict]) -> list[dict]:
    """Critical, warning, info; then more modifiable factors, then the higher PTH multiple."""
    ordered = sorted(rows, key=lambda r: (
        TIER_ORDER[r["tier"]], -r["modifiable_factors"], r["pth_multiple"] is None,
        -(r["pth_multiple"] or 0.0), r["patient_id"]))
    return [{"rank": n, **row} for n, row in enumerate(ordered, 1)]


# -- tasks (run on workers: knowledge is loaded there, once per process, never shipped) --------
@lru_cache(maxsize=4)
def _tokens(knowledge_dir: str | None, cards_dir: str | None) -> ScopeTokens:
    return ScopeTokens.of(clinical(knowledge_dir, cards_dir).knowledge)


@lru_cache(maxsize=4)
def _lab_codes(knowledge_dir: str | None, cards_dir: str | None):
    return lab_code_pattern(clinical(knowledge_dir, cards_dir).knowledge)


def _candidates_task(block: bytes, knowledge_dir, cards_dir) -> set[str]:
    return scope_candidates(block, _tokens(knowledge_dir, cards_dir))


def _select_task(block: bytes, resource_type: str, candidates, known, knowledge_dir, cards_dir):
    lab_codes = _lab_codes(knowledge_dir, cards_dir) if resource_type == "Observation" else None
    return select_lines(block, resource_type, candidates, known, lab_codes)


def _assess_partition(groups, medications, as_of, knowledge_dir, cards_dir) -> list[Outcome]:
    """Each patient's lines, from every block that held some, assessed once."""
    clinical_ = clinical(knowledge_dir, cards_dir)
    outcomes = []
    for patient, parts in groups:
        lines = [line for _patient, chunk in parts for line in unpacked(chunk)]
        outcomes.append(assess_patient(patient, lines, medications, as_of, clinical_))
    return outcomes


# -- the graph ---------------------------------------------------------------------------------
def _blocks(file: ExportFile, block_size: int) -> list:
    """Line-aligned byte ranges of a file, as Dask tasks (a gzip file is one block)."""
    _sample, blocks = read_bytes(
        file.path, delimiter=b"\n", sample=False,
        blocksize=None if file.compressed else block_size,
        compression="gzip" if file.compressed else None)
    return blocks[0]


@contextmanager
def _cluster(address: str | None, workers: int | None, total: int) -> Iterator:
    """(client or None, label): the cluster the screen runs on."""
    if address == "synchronous" or (address is None and workers is None and total < SMALL_EXPORT):
        with dask.config.set(scheduler="synchronous"):
            yield None, "synchronous"
        return
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client, address
        return
    n = workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    with cluster, Client(cluster) as client:
        yield client, f"local cluster, {n} worker processes"


def _prepare(knowledge_dir: str | None, cards_dir: str | None) -> None:
    """On each worker, before its first block: the knowledge loaded, fhir.resources warmed (the
    first validation of a type builds its model)."""
    clinical(knowledge_dir, cards_dir)
    _tokens(knowledge_dir, cards_dir)
    warm_up()


def _compute(client, progress: bool, *collections):
    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar() if progress else nullcontext():
            return dask.compute(*collections)
    futures = client.compute(list(collections))
    if progress:
        from distributed import progress as show

        show(futures)
    return client.gather(futures)


def _share(client, value):
    """A value every task of the next pass reads: sent to each worker once."""
    if client is None:
        return value
    # In a list: scatter sends each element of a collection on its own.
    return client.scatter([value], broadcast=True, hash=False)[0]


def screen(export: str | os.PathLike, as_of: datetime, *, scheduler: str | None = None,
           workers: int | None = None, knowledge_dir: str | None = None,
           cards_dir: str | None = None, block_size: int = BLOCK_SIZE,
           progress: bool = False) -> ScreenResult:
    """Screen a Bulk Data export as of `as_of` (UTC-aware)."""
    started = time.perf_counter()
    files = [f for f in export_files(export) if f.resource_type in RESOURCE_TYPES
             or f.resource_type == "Medication"]
    clinical(knowledge_dir, cards_dir)  # fail here, not on a worker, if the knowledge is bad
    total = sum(f.size for f in files)
    phases = {}
    with _cluster(scheduler, workers, total) as (client, label):
        if client is not None:
            client.run(_prepare, knowledge_dir, cards_dir)  # every worker at once
        blocks = {f: _blocks(f, block_size) for f in files}
        of_type = lambda *types: [(f, b) for f in files if f.resource_type in types  # noqa: E731
                                  for b in blocks[f]]
        patients = [dask.delayed(read_patients)(b) for _f, b in of_type("Patient")]
        medications = [dask.delayed(read_medications)(b) for _f, b in of_type("Medication")]
        found = [dask.delayed(_candidates_task)(b, knowledge_dir, cards_dir)
                 for _f, b in of_type(*SCOPE_TYPES)]
        read, meds, hits = _compute(client, progress, patients, medications, found)
        known = frozenset().union(*(ids for ids, _c in read))
        counts = sum((c for _ids, c in read), Counts())
        # An export without Patient files (a `_type` filter) still screens everyone found;
        # resources of unknown patients can then not be told apart.
        candidates = frozenset().union(*hits) & known if known else frozenset().union(*hits)
        medication_index = {k: v for part in meds for k, v in part.items()}
        phases["find"] = time.perf_counter() - started

        # As bytes: blocks compare ids without decoding a line.
        shared_candidates, shared_known, shared_meds = (
            _share(client, frozenset(p.encode() for p in candidates)),
            _share(client, frozenset(p.encode() for p in known) if known else None),
            _share(client, medication_index))
        selected = [dask.delayed(_select_task, nout=2)(
            b, f.resource_type, shared_candidates, shared_known, knowledge_dir, cards_dir)
            for f, b in of_type(*(t for t in RESOURCE_TYPES if t != "Patient"), "Patient")]
        partitions = len(selected)
        lines = db.from_delayed([s[0] for s in selected])
        grouped = lines.groupby(itemgetter(0), shuffle="tasks")
        assessed = grouped.map_partitions(_assess_partition, shared_meds, as_of,
                                          knowledge_dir, cards_dir)
        outcomes, block_counts = _compute(client, progress, assessed, [s[1] for s in selected])
        phases["assess"] = time.perf_counter() - started - phases["find"]
    counts = sum(block_counts, counts)
    counts.unreadable += sum(o.unreadable_lines for o in outcomes)
    outcomes = list(outcomes)
    rows = rank([o.row for o in outcomes if o.row is not None])
    return ScreenResult(as_of, rows, outcomes, counts, time.perf_counter() - started, label,
                        partitions, len(candidates), phases)
