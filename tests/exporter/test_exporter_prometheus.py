"""A real Prometheus server scrapes a metrics server over a real pool; PromQL sees the kernel's numbers."""

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from btrfs_core import filesystem
from btrfs_core.pool import Pool
from btrfs_exporter import build_registry, start_metrics_server
from tests.conftest import free_port
from tests.exporter.helpers import kernel_qgroups, pvc, require, write_file
from tests.support import eventually

MiB = 1 << 20
pytestmark = pytest.mark.kernel


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_prometheus_scrapes_the_volumes_usage(pool: Pool, btrfs_mount: Path, tmp_path: Path) -> None:
    binary = require("prometheus", "prometheus")
    metrics = build_registry(pool, "btrfs.csi.test")
    volume = pool.create_volume("data", 64 * MiB, metadata=pvc("team", "data-0"))
    write_file(pool.volume_path(volume.id) / "f", 7 * MiB + 4096)
    filesystem.sync(pool.root)
    kernel_referenced = kernel_qgroups(btrfs_mount)[volume.qgroup][0]

    server = start_metrics_server(("127.0.0.1", 0), metrics.registry)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "btrfs-csi",
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}],
                    }
                ],
            }
        )
    )
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        eventually(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200,
            "Prometheus ready",
            60,
            interval=0.2,
            ignoring=(OSError,),
        )

        def target_up() -> bool:
            targets = get_json(f"{api}/targets")["data"]["activeTargets"]
            return any(t["health"] == "up" for t in targets)

        eventually(target_up, "scrape target up", interval=0.2, ignoring=(OSError,))

        def query() -> list[dict[str, Any]]:
            promql = 'btrfs_csi_volume_referenced_bytes{pvc_namespace="team",pvc_name="data-0"}'
            answer = get_json(f"{api}/query?" + urllib.parse.urlencode({"query": promql}))
            assert answer["status"] == "success"
            result: list[dict[str, Any]] = answer["data"]["result"]
            return result

        (sample,) = eventually(query, "the volume's usage in Prometheus", interval=0.2, ignoring=(OSError,))
        assert sample["metric"]["volume_id"] == volume.id
        assert sample["metric"]["job"] == "btrfs-csi"
        assert int(float(sample["value"][1])) == kernel_referenced

        ratio = get_json(
            f"{api}/query?"
            + urllib.parse.urlencode(
                {"query": "btrfs_csi_volume_referenced_bytes / btrfs_csi_volume_limit_bytes"}
            )
        )["data"]["result"]
        assert float(ratio[0]["value"][1]) == pytest.approx(kernel_referenced / (64 * MiB))
    except BaseException:
        print(log_path.read_text()[-4000:])
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        server.stop()
