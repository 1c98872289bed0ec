"""Without a cluster: how brisk reads SLURM's variables (ranks, rendezvous, the job to requeue)."""

from __future__ import annotations

import pytest

from brisk.run.distributed import SLURM_PORT_BASE, slurm_env
from brisk.sweep.slurm import job_address

STEP = {
    "SLURM_STEP_ID": "0",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_ID": "1234",
    "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu1",
}


def test_an_srun_task_gets_torchruns_variables() -> None:
    assert slurm_env(STEP) == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(SLURM_PORT_BASE + 1234),
    }
    # an address or port given by the user wins
    given = slurm_env({**STEP, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("10.0.0.1", "29500")


@pytest.mark.parametrize(
    "environ",
    [
        {**STEP, "WORLD_SIZE": "2"},  # torchrun inside srun: torchrun's variables stand
        {k: v for k, v in STEP.items() if k != "SLURM_STEP_ID"},  # the batch script: one process
        {**STEP, "SLURM_NTASKS": "1"},  # a one-task step, as the sweep launcher starts
        {},  # no SLURM at all
    ],
    ids=["torchrun", "batch-script", "one-task", "no-slurm"],
)
def test_nothing_is_mapped_outside_a_multi_task_step(environ: dict[str, str]) -> None:
    assert slurm_env(environ) == {}


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("vm", "vm"), ("node[03-05,07]", "node03"), ("a1,b2", "a1"), ("gpu-[10-12],x", "gpu-10")],
)
def test_the_rendezvous_is_the_first_node(nodelist: str, host: str) -> None:
    assert slurm_env({**STEP, "SLURM_JOB_NODELIST": nodelist})["MASTER_ADDR"] == host


def test_an_array_task_is_requeued_by_its_own_address() -> None:
    # the first task of array 40 has SLURM_JOB_ID 40: `scontrol requeue 40` would requeue them all
    task = {"SLURM_JOB_ID": "40", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "0"}
    assert job_address(task) == "40_0"
    assert job_address({"SLURM_JOB_ID": "41"}) == "41"
