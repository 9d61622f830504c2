"""infra/: the local cluster script run for real (bounded, loopback), and the manifests read for what they promise."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_local_cluster_ingests_on_a_worker_process_and_leaves_nothing_running(tmp_path):
    """Postgres, a Prefect server and two workers as separate processes; the ingest runs on the cpu worker."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "money.py").write_text('def rounded(x):\n    """Round to cents."""\n    return round(x, 2)\n')
    port = free_port()
    done = subprocess.run(
        ["bash", str(INFRA / "local-cluster.sh"), str(source)],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PORT": str(port)},
        capture_output=True, text=True, timeout=420,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Flow run finished successfully in 'Completed'" in out, out[-3000:]
    assert "Worker 'local-cpu' submitting flow run" in out, "executed by the cpu worker process, not in-process"
    (row,) = [line for line in out.splitlines() if line.startswith("cluster-demo ")]
    assert row.split()[3:5] == ["1", "1"] and row.endswith("complete"), row  # 1 file, 1 chunk, read back
    work = re.search(r"host=(/tmp/grounding-cluster-\w+)/pgdata", out).group(1)
    assert not Path(work).exists(), "its scratch directory is removed"
    left = subprocess.run(["pgrep", "-af", f"{work}|--port {port}"], capture_output=True, text=True).stdout
    assert not left.strip(), f"processes outlived the script: {left}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the Prefect server still listens"


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_kubernetes_worker_shares_one_grounding_home():
    """Checkpoints written by a gpu pod (runs/<id>) must be readable by every other pod: one RWX claim."""
    docs = _documents(INFRA / "k8s/workers.yaml")
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {"grounding-worker-cpu", "grounding-worker-gpu"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not any("emptyDir" in v for v in volumes.values()), deployment["metadata"]["name"]
        for container in pod["containers"]:
            home = {e["name"]: e.get("value") for e in container["env"]}["GROUNDING_HOME"]
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == home]
            claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
            assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
            refs = {r["secretRef"]["name"] for r in container.get("envFrom", [])}
            secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] in refs)
            assert {"GROUNDING_DATABASE_URL", "PREFECT_API_URL", "GROUNDING_GIT_HOSTS"} <= set(secret["stringData"])


def test_the_helm_values_mount_the_same_home_and_name_a_self_hosted_server():
    worker = yaml.safe_load((INFRA / "k8s/prefect-worker-gpu.values.yaml").read_text())["worker"]
    assert worker["apiConfig"] in {"selfHostedServer", "server"}  # the chart's names before and after its rename
    assert worker[{"selfHostedServer": "selfHostedServerApiConfig", "server": "serverApiConfig"}[worker["apiConfig"]]][
        "apiUrl"
    ].endswith("/api")
    home = {e["name"]: e["value"] for e in worker["extraEnvVars"]}["GROUNDING_HOME"]
    (mount,) = [m for m in worker["extraVolumeMounts"] if m["mountPath"] == home]
    (volume,) = [v for v in worker["extraVolumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == "grounding-home"


def test_compose_workers_share_one_home_volume():
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    homes = set()
    for name in ("worker-cpu", "worker-gpu", "api", "mcp"):
        home = services[name]["environment"]["GROUNDING_HOME"]
        (volume,) = [v.split(":")[0] for v in services[name]["volumes"] if v.endswith(f":{home}")]
        homes.add(volume)
    assert len(homes) == 1, homes


def test_network_policies_admit_only_grounding_pods_to_the_prefect_api_and_postgres():
    """The Prefect API starts trusted ingests and shows every run's parameters, Postgres holds every repository:
    in the namespace nothing is admitted by default, and those two only from pods with the client labels."""
    from urllib.parse import urlsplit

    policies = {d["metadata"]["name"]: d for d in _documents(INFRA / "k8s/network-policy.yaml")}
    workers = _documents(INFRA / "k8s/workers.yaml")
    (namespace,) = [d["metadata"]["name"] for d in workers if d["kind"] == "Namespace"]
    assert all(p["kind"] == "NetworkPolicy" and p["metadata"]["namespace"] == namespace for p in policies.values())
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and "Ingress" in deny["policyTypes"] and not deny.get("ingress")

    (secret,) = [d["stringData"] for d in workers if d["kind"] == "Secret"]
    served = {  # the policy guarding each server, the port the clients' URL names, the label a client needs
        "prefect-api-from-grounding-only": (urlsplit(secret["PREFECT_API_URL"]).port, "grounding/prefect-client"),
        "postgres-from-grounding-only": (urlsplit(secret["GROUNDING_DATABASE_URL"]).port, "grounding/database-client"),
    }
    for name, (port, label) in served.items():
        spec = policies[name]["spec"]
        assert spec["podSelector"]["matchLabels"] and spec["policyTypes"] == ["Ingress"], name
        for rule in spec["ingress"]:
            assert rule["ports"] == [{"protocol": "TCP", "port": port}], name
            for peer in rule["from"]:  # pods of this namespace only: no namespaceSelector, no ipBlock
                assert set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"], (name, peer)
        admitted = [p["podSelector"]["matchLabels"] for r in spec["ingress"] for p in r["from"]]
        assert {label: "true"} in admitted, name
        for worker in (d for d in workers if d["kind"] == "Deployment"):
            assert worker["spec"]["template"]["metadata"]["labels"].get(label) == "true", worker["metadata"]["name"]
        helm = yaml.safe_load((INFRA / "k8s/prefect-worker-gpu.values.yaml").read_text())["worker"]
        assert helm["podLabels"].get(label) == "true"
