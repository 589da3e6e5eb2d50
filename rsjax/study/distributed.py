"""Multi-process sweeps on JAX's own distributed runtime (``jax.distributed``).

The same sweep command is started as P processes (one machine: ``scripts/multiprocess.sh``;
a cluster: ``srun``); each is told the coordinator's ``HOST:PORT``, P and its process id by
flags or by the environment (:func:`resolve`). :func:`initialize` then calls
``jax.distributed.initialize`` before any other use of JAX. Process 0 hosts the coordination
service; no device collective is used: the processes only meet at named barriers of the
runtime (:func:`barrier`) and exchange small values through its key-value store
(:func:`publish`, :func:`gather`), both of which work on every backend, CPU included.

Failure: the runtime's heartbeats (``heartbeat_timeout`` seconds) detect a dead process and JAX
then terminates every other process of the job (SIGABRT, "the JAX distributed service detected
fatal errors"), or, when a process is already waiting at a barrier, the runtime fails that
wait ("Task k heartbeat timeout") and :func:`barrier` raises :class:`PeerFailedError`; records
already appended are on disk (each task's records are appended and fsynced as one write), so
starting the same job again resumes it. A process cannot rejoin a
running job: the whole job is restarted.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from rsjax.errors import InputError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # read by jax.distributed.initialize itself too
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
#: what JAX's own Slurm detection needs (jax._src.clusters.slurm_cluster)
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
#: a barrier waits this long at most; a dead peer ends the wait earlier (heartbeats)
BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000

_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class ProcessSpec:
    """How this process joins a multi-process job. ``slurm``: let ``jax.distributed.initialize``
    read the coordinator, P and the id from Slurm's variables (``srun``)."""

    coordinator: str | None
    num_processes: int
    process_id: int
    slurm: bool = False
    heartbeat_timeout: int = 100
    init_timeout: int = 300

    def describe(self) -> str:
        where = "from Slurm" if self.slurm else f"coordinator {self.coordinator}"
        return f"process {self.process_id} of {self.num_processes} ({where})"


def _int(value: str | int | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise InputError(f"{name} must be an integer, got {value!r}") from None


def check_address(address: str, name: str = "--coordinator") -> str:
    """``HOST:PORT`` (``[IPv6]:PORT`` too) with 1 <= PORT <= 65535, else InputError naming it."""
    m = _ADDRESS.match(address.strip()) if isinstance(address, str) else None
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise InputError(f"{name} must be HOST:PORT with a port in 1..65535, got {address!r}")
    return address.strip()


def resolve(coordinator: str | None = None, num_processes: int | str | None = None,
            process_id: int | str | None = None, *, heartbeat_timeout: int = 100, init_timeout: int = 300,
            environ: Mapping[str, str] | None = None) -> ProcessSpec | None:
    """The multi-process setting of this process, or None for a single-process run.

    Each value comes from its flag, else from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``. With none of them set, a Slurm step of more than one task (``srun -n P``)
    is detected as JAX detects it. Raises InputError naming a bad value (process id outside
    [0, P), P < 1, an address not HOST:PORT, a value missing)."""
    env = os.environ if environ is None else environ
    coord = coordinator if coordinator is not None else env.get(ENV_COORDINATOR) or None
    num = _int(num_processes, "--num-processes") if num_processes is not None else \
        _int(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
    pid = _int(process_id, "--process-id") if process_id is not None else \
        _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    from rsjax.errors import check_int_at_least

    check_int_at_least("--heartbeat-timeout", heartbeat_timeout, 1)
    check_int_at_least("initialization timeout", init_timeout, 1)
    if num is None and pid is None and coord is None:
        if all(v in env for v in SLURM_VARS):
            tasks = _int(env["SLURM_NTASKS"], "SLURM_NTASKS")
            if tasks is not None and tasks > 1:
                rank = _int(env["SLURM_PROCID"], "SLURM_PROCID")
                if rank is None or not 0 <= rank < tasks:
                    raise InputError(f"SLURM_PROCID must be in [0, {tasks}), got {env['SLURM_PROCID']!r}")
                return ProcessSpec(None, tasks, rank, True, heartbeat_timeout, init_timeout)
        return None
    if num is None:
        raise InputError("--num-processes (or JAX_NUM_PROCESSES) is needed with --coordinator / --process-id")
    if num < 1:
        raise InputError(f"--num-processes must be an integer >= 1, got {num}")
    if pid is None:
        if num == 1:
            return None
        raise InputError(f"--process-id (or JAX_PROCESS_ID) is needed with --num-processes {num}")
    if not 0 <= pid < num:
        raise InputError(f"--process-id must be in [0, {num}) with --num-processes {num}, got {pid}")
    if num == 1:
        if coord is not None:
            check_address(coord)
        return None
    if coord is None:
        raise InputError(f"--coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS) is needed with --num-processes {num}")
    return ProcessSpec(check_address(coord), num, pid, False, heartbeat_timeout, init_timeout)


def initialize(spec: ProcessSpec | None) -> None:
    """``jax.distributed.initialize`` for ``spec`` (nothing for None); must come before any
    other use of JAX in the process."""
    if spec is None:
        return
    import jax

    timeouts = dict(initialization_timeout=spec.init_timeout, heartbeat_timeout_seconds=spec.heartbeat_timeout)
    if spec.slurm:
        jax.distributed.initialize(**timeouts)
    else:
        jax.distributed.initialize(spec.coordinator, spec.num_processes, spec.process_id, **timeouts)


def _client():
    from jax._src import distributed

    return distributed.global_state.client


class PeerFailedError(RuntimeError):
    """Another process of the job died (or the coordinator went away) while this one waited."""


def barrier(name: str) -> None:
    """Wait until every process of the job reaches the barrier ``name`` (no-op with one process).

    Raises :class:`PeerFailedError` when the runtime fails the wait (a peer's heartbeats stopped):
    the message says that the whole job is to be started again to resume."""
    import jax

    if jax.process_count() > 1:
        try:
            _client().wait_at_barrier(f"rsjax/{name}", BARRIER_TIMEOUT_MS)
        except Exception as err:  # jax.errors.JaxRuntimeError (its class moved between versions)
            cause = (str(err).splitlines() or [type(err).__name__])[0].rstrip(". ")
            raise PeerFailedError(
                f"another process of the job failed while process {jax.process_index()} waited at barrier "
                f"{name!r}: {cause}. Records written "
                "so far are kept: start the same job again (every process) to resume it") from err


def publish(name: str, value: str) -> None:
    """Store this process's ``value`` under ``name`` in the job's key-value store."""
    import jax

    if jax.process_count() > 1:
        _client().key_value_set(f"rsjax/{name}/{jax.process_index()}", value)


def gather(name: str, own: str) -> list[str]:
    """Every process's published value of ``name``, by process index (``own`` for this one);
    call it after a barrier that follows every :func:`publish`."""
    import jax

    if jax.process_count() == 1:
        return [own]
    c = _client()
    return [own if i == jax.process_index() else c.blocking_key_value_get(f"rsjax/{name}/{i}", 60_000)
            for i in range(jax.process_count())]
