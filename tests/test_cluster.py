"""cluster.yaml against Ray's own cluster-config schema, and a real two-node Ray cluster on this machine.

The two-node test runs `ray start --head` and a second `ray start --address` inside a network
namespace that only has loopback (created and deleted by the test), with token auth on both
nodes, then `python -m search.grid --address` on it. It needs root for `ip netns`; elsewhere it
skips and says so. About 1 minute on 2 cores.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (REPO / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(copy.deepcopy(config)))  # raises on any schema error

    assert config["provider"]["type"] == "aws"
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-") and "gpu" in image  # our Ray, with CUDA
    head = config["available_node_types"][config["head_node_type"]]
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # CPU head
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)  # GPU workers
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers)
    assert all(t["min_workers"] < t["max_workers"] for t in workers)  # autoscaling
    assert any("pip install" in c and "pokemon-t2i" in c for c in config["setup_commands"])  # installs this project
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token" in c for c in cmds)  # the same auth mode on every node
    # The dashboard's job API on the head's loopback only; README's `ray dashboard` tunnel reaches it there.
    hosts = re.findall(r"--dashboard-host[= ](\S+)", " ".join(config["head_start_ray_commands"]))
    assert hosts == ["127.0.0.1"], hosts
    assert set(re.findall(r"<YOUR_[A-Z0-9_]+>", text)) >= {"<YOUR_AWS_REGION>", "<YOUR_S3_INSTANCE_PROFILE_ARN>"}


def _netns_or_skip() -> str:
    if os.geteuid() != 0:
        pytest.skip("the two-node test creates a network namespace: needs root")
    if shutil.which("ip") is None:
        pytest.skip("the two-node test needs iproute2's `ip netns`")
    ns = f"t2i-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"`ip netns add` is not available here: {r.stderr.strip()}")
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
    return ns


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"ray start exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    """End a `ray start --block` we started: its process group, then any process of its session left over. Ctrl-C
    (SIGINT) ends it in about a second; it lets SIGTERM pass for more than 15 s (measured with Ray 2.60)."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue


def _leftover_pids(temp_dir: str) -> list[int]:
    """Processes whose command line names this test's Ray temp dir: ours, and only ours."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if temp_dir.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    ns = _netns_or_skip()
    temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # data_pipeline.ray_env (imported by other tests in this process) pins a local Ray to loopback
    # by setting RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which also makes `ray start` refuse a second
    # node. The namespace is loopback-only already, so the nodes run with Ray's own default.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    ray_cli = str(Path(sys.executable).parent / "ray")
    common = ["--block", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp_dir}",
              "--node-ip-address=127.0.0.1"]
    procs = []
    try:
        for name, extra in (("head", ["--head", "--port=6379", "--include-dashboard=false"]),
                            ("worker", ["--address=127.0.0.1:6379"])):
            log = tmp_path / f"{name}.log"
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, ray_cli, "start", *extra, *common], env=env,
                                          stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True))
            _wait_for(log, "Ray runtime started", procs[-1], timeout=90)

        results = tmp_path / "results"
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "search.grid", "--preset", "smoke",
             "--address", "127.0.0.1:6379", "--results", str(results), "--experiment", "two-node",
             "--lr", "1e-4", "1e-5", "--weight-decay", "1e-5", "--n-heads", "2", "--ff-dim", "512", "--n-layers", "2",
             "--epochs", "24"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    finally:
        for p in procs:
            _stop(p, temp_dir)
        for pid in _leftover_pids(temp_dir):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(temp_dir, ignore_errors=True)

    exp = results / "two-node"
    with open(exp / "best_config.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)
    # One CPU per node and both trials pending from the start: Tune places them side by side. Each trial lasts 24
    # epochs, twice what the second node's new worker process takes to start here (about 12 smoke epochs): a trial
    # that ended first would hand its process on to the other trial (Tune's reuse_actors), all on one node.
    assert len({row["node_id"] for row in rows}) == 2, "all trials ran on one node"
    prov = json.loads((exp / "provenance.json").read_text())
    assert prov["cluster"]["nodes"] == 2 and "across 2 node(s)" in prov["devices"]
