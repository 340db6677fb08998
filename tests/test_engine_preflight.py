"""``SimulationEngine.preflight``: resources and device that cannot host one client (< 5 s).

What the machine offers is monkeypatched (this CI machine has 2 CPUs and no GPU; the
real detection is checked too). The command-line side (exit 2, one line) is in
tests/test_engine_e2e.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from runner.config import ConfigError
from runner.engine import resources, simulation


def cfg(
    num_cpus: float = 1, num_gpus: float = 0.0, device: str = "auto", init_args: dict | None = None
) -> dict[str, Any]:
    return {
        "device": device,
        "backend": {
            "client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
            "init_args": dict(init_args or {}),
            "reuse_workers": True,
        },
    }


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A local machine with 2 CPUs, no GPU, no CUDA; Ray not started in this process."""
    import ray

    m: dict[str, Any] = {"cpus": 2.0, "gpus": 0.0, "cuda": False}
    monkeypatch.setattr(resources, "local_cpus", lambda: m["cpus"])
    monkeypatch.setattr(resources, "local_gpus", lambda: m["gpus"])
    monkeypatch.setattr(resources, "_cuda_in_driver", lambda: m["cuda"])
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return m


def error(c: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resources.check_resources(c)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{info.value.key}: ")
    return info.value


def test_what_fits_passes(machine: dict[str, Any]):
    resources.check_resources(cfg())
    resources.check_resources(cfg(num_cpus=2))
    resources.check_resources(cfg(num_cpus=0.5))
    machine.update(gpus=1.0, cuda=True)
    resources.check_resources(cfg(num_gpus=0.5, device="cuda"))
    resources.check_resources(cfg(num_gpus=1, device="auto"))


def test_too_many_cpus(machine: dict[str, Any]):
    e = error(cfg(num_cpus=64))
    assert str(e) == "backend.client_resources.num_cpus: 64 CPUs per client, but this Ray instance offers 2"


def test_init_args_num_cpus_is_what_ray_offers(machine: dict[str, Any]):
    resources.check_resources(cfg(4, init_args={"num_cpus": 8}))
    e = error(cfg(16, init_args={"num_cpus": 8}))
    assert "16 CPUs per client, but this Ray instance offers 8" in str(e)


def test_gpus_without_a_gpu(machine: dict[str, Any]):
    e = error(cfg(num_gpus=1))
    assert str(e) == "backend.client_resources.num_gpus: 1 GPU per client, but this machine has no GPU Ray can use"
    machine["gpus"] = 1.0
    e = error(cfg(num_gpus=2))
    assert "2 GPUs per client, but this Ray instance offers 1" in str(e)


def test_device_cuda(machine: dict[str, Any]):
    e = error(cfg(device="cuda"))
    assert e.key == "device" and "no CUDA GPU" in str(e)
    machine.update(gpus=1.0, cuda=True)
    e = error(cfg(device="cuda", num_gpus=0.0))
    assert e.key == "backend.client_resources.num_gpus" and "device=cuda needs a GPU share per client" in str(e)


CLUSTER = {"address": "10.0.0.1:6379"}


def test_cluster_nodes(monkeypatch: pytest.MonkeyPatch):
    import ray

    nodes = [(2.0, 0.0), (4.0, 0.0)]
    connected: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(connected))
    monkeypatch.setattr(resources, "_cluster_nodes", lambda: nodes)
    monkeypatch.setattr(resources, "_cuda_in_driver", lambda: False)
    c = cfg(3, init_args=CLUSTER)
    resources.check_resources(c, connect=connected.append)
    assert connected == [{"address": "10.0.0.1:6379"}]
    with pytest.raises(
        ConfigError, match="8 CPUs per client, but the Ray cluster at 10.0.0.1:6379 offers at most 4 per node"
    ):
        resources.check_resources(cfg(8, init_args=CLUSTER), connect=connected.append)
    with pytest.raises(ConfigError, match="1 GPU per client, but the Ray cluster at .* has no GPU"):
        resources.check_resources(cfg(1, 1.0, init_args=CLUSTER), connect=connected.append)
    nodes[:] = [(8.0, 0.0), (1.0, 1.0)]
    with pytest.raises(ConfigError, match="no node of the Ray cluster at .* offers 2 CPUs and 1 GPU at once"):
        resources.check_resources(cfg(2, 1.0, init_args=CLUSTER), connect=connected.append)


def test_a_refused_preflight_starts_nothing(machine: dict[str, Any]):
    engine = simulation.SimulationEngine()
    with pytest.raises(ConfigError):
        engine.preflight(cfg(num_cpus=64))
    assert simulation._Ray.starter is None


def test_real_detection_is_sane():
    assert resources.local_cpus() >= 1
    assert resources.local_gpus() >= 0
