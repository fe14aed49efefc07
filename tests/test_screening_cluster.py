"""The screen on real Dask clusters: worker processes, the task shuffle between them, and an
existing scheduler reached by address (`--scheduler`), giving the in-process answer."""

from __future__ import annotations

import csv
from datetime import datetime

import pytest
from click.testing import CliRunner
from screening_data import AS_OF, write_population

from cds_service.cli import main
from cds_service.screening import screen

distributed = pytest.importorskip("distributed")
NOW = datetime.fromisoformat(AS_OF.replace("Z", "+00:00"))
# The compressed size of the shuffled lines depends on how files are split: not compared.
COMPRESSED = {"shuffled_bytes": None}


def _knowledge_loaded() -> int:
    from cds_service.screening.assess import clinical

    return clinical.cache_info().currsize


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    write_population(folder, split_lines=4000)
    return folder


@pytest.fixture(scope="module")
def in_process(export):
    return screen(export, NOW, scheduler="synchronous")


def test_a_local_cluster_of_two_worker_processes_gives_the_same_worklist(export, in_process):
    # Small blocks: many partitions, so the shuffle really moves patients between workers.
    result = screen(export, NOW, workers=2, block_size=256 * 1024)
    assert result.scheduler == "local cluster, 2 worker processes"
    assert result.partitions > 10
    assert result.rows == in_process.rows
    assert result.counts.as_dict() | COMPRESSED == in_process.counts.as_dict() | COMPRESSED


def test_the_scheduler_option_runs_the_same_job_on_an_existing_cluster(export, in_process,
                                                                        tmp_path):
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        out = tmp_path / "w.csv"
        done = CliRunner().invoke(main, ["screen", str(export), "--as-of", AS_OF, "--out",
                                         str(out), "--scheduler", address, "--block-size", "1"])
        assert done.exit_code == 0, done.output
        assert address in done.output  # the summary names the engine it ran on
        # The work ran in that cluster's worker processes: they loaded the knowledge.
        loaded = client.run(_knowledge_loaded)
        assert len(loaded) == 2 and any(loaded.values()), loaded
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["patient_id"] for r in rows] == [r["patient_id"] for r in in_process.rows]
    assert [r["tier"] for r in rows] == [r["tier"] for r in in_process.rows]
