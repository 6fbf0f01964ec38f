"""Multi-process start-up (jax.distributed) and the few helpers a multi-controller run needs.

JAX's multi-controller model: every host runs the same program; `jax.devices()` lists the
devices of all processes and one global mesh spans them; each process holds only the
shards on its own devices (its "addressable" shards). This module is the one place that

- decides whether this process is one of several and calls `jax.distributed.initialize()`
  (explicit `--coordinator/--num-processes/--process-id`, the JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID variables, or a cluster jax itself detects: Cloud
  TPU, SLURM, Open MPI, Kubernetes), with bounded timeouts so a dead peer ends the others;
- builds global batches from process-local rows (`process_local_batch`), each process
  placing only its own shards;
- gathers small per-process host arrays (rewards, lengths) so every process sees the same
  values bit for bit (`host_allgather`, `gather_rows`);
- keeps console and metrics output on process 0 (`is_primary`, `setup_logging`).

Nothing here imports jax at module level, so `prorl-jax --help` stays instant; the
start-up must run before anything initialises a jax backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from prorl_jax.errors import ConfigError, UserError

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

# jax's own defaults are 300 s (initialization), 100 s (heartbeat), 300 s (shutdown).
DEFAULT_INIT_TIMEOUT_S = 300
DEFAULT_HEARTBEAT_TIMEOUT_S = 100
DEFAULT_SHUTDOWN_TIMEOUT_S = 300

# `prorl-jax` subcommands that run under several processes. The others refuse with one
# line (exit 2) after start-up; see docs/distributed.md, "Status".
MULTI_PROCESS_COMMANDS: frozenset[str] = frozenset({"eval", "generate", "train"})

# Subcommands that run as one process by design, with the reason their refusal gives.
SINGLE_PROCESS_COMMANDS: dict[str, str] = {
    "convert": "it only reads and writes checkpoint files, one tensor at a time from "
               "memory-mapped files, which one process on one host does as well as several "
               "(no accelerator mesh is involved); launch it once, with --single-process where "
               "a launcher sets JAX_* variables or a cluster is detected",
}


class DistributedError(UserError):
    """The multi-process launch is misconfigured (flags, environment, or a peer failed)."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a multi-process run (None fields: jax auto-detects them).

    source: "explicit" (flags / JAX_* variables) or the detected cluster's name.
    """

    source: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    init_timeout_s: int = DEFAULT_INIT_TIMEOUT_S
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S
    shutdown_timeout_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S


# ---------------------------------------------------------------- command-line flags

def add_arguments(parser: argparse.ArgumentParser, *, _nested: bool = False) -> None:
    """The multi-process flags shared by train / eval / generate / convert.

    Call it after the command's own arguments: the flags also go on each of its
    sub-commands (`convert orbax-to-hf ... --single-process`), with no default there so
    a value given before the sub-command survives.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_arguments(child, _nested=True)
    g = parser.add_argument_group(
        "multi-process (jax.distributed; auto-detected on Cloud TPU, SLURM, Open MPI, Kubernetes)")

    def default(value):
        return argparse.SUPPRESS if _nested else value

    g.add_argument("--coordinator", metavar="HOST:PORT", default=default(None),
                   help=f"address of process 0's coordinator (env {ENV_COORDINATOR})")
    g.add_argument("--num-processes", type=int, metavar="N", default=default(None),
                   help=f"number of processes (env {ENV_NUM_PROCESSES})")
    g.add_argument("--process-id", type=int, metavar="I", default=default(None),
                   help=f"this process's id, 0..N-1 (env {ENV_PROCESS_ID})")
    g.add_argument("--init-timeout", type=int, metavar="S", default=default(DEFAULT_INIT_TIMEOUT_S),
                   help="seconds to wait for all processes to connect (default "
                        f"{DEFAULT_INIT_TIMEOUT_S})")
    g.add_argument("--heartbeat-timeout", type=int, metavar="S",
                   default=default(DEFAULT_HEARTBEAT_TIMEOUT_S),
                   help="seconds without a heartbeat after which a process counts as dead "
                        f"and the others stop (default {DEFAULT_HEARTBEAT_TIMEOUT_S})")
    g.add_argument("--shutdown-timeout", type=int, metavar="S",
                   default=default(DEFAULT_SHUTDOWN_TIMEOUT_S),
                   help="seconds a finished process waits for the others to finish (default "
                        f"{DEFAULT_SHUTDOWN_TIMEOUT_S})")
    g.add_argument("--single-process", action="store_true", default=default(False),
                   help="ignore cluster detection and the JAX_* variables: run as one process")


def launch_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                     detect=None) -> Launch | None:
    """The `Launch` the parsed flags (and environment) ask for; None: one process.

    Args:
      args: parsed flags from `add_arguments` (missing attributes count as unset).
      environ: the environment (default os.environ).
      detect: cluster detector (default `detect_cluster`), injectable for tests.
    Raises:
      ConfigError for incomplete or inconsistent settings.
    """
    environ = os.environ if environ is None else environ
    if getattr(args, "single_process", False):
        return None

    def pick(attr: str, env: str, kind):
        value = getattr(args, attr, None)
        if value is not None:
            return value
        raw = environ.get(env)
        if raw is None or raw == "":
            return None
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} is not a valid {kind.__name__}") from None

    coordinator = pick("coordinator", ENV_COORDINATOR, str)
    num = pick("num_processes", ENV_NUM_PROCESSES, int)
    pid = pick("process_id", ENV_PROCESS_ID, int)
    timeouts = {}
    for attr, field in (("init_timeout", "init_timeout_s"),
                        ("heartbeat_timeout", "heartbeat_timeout_s"),
                        ("shutdown_timeout", "shutdown_timeout_s")):
        value = getattr(args, attr, None)
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{attr.replace('_', '-')} must be >= 1 second, got {value}")
            timeouts[field] = value

    if coordinator is not None:
        _check_address(coordinator)
    if num is not None and num < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num}")
    if pid is not None and pid < 0:
        raise ConfigError(f"--process-id must be >= 0, got {pid}")
    if num is not None and pid is not None and pid >= num:
        raise ConfigError(f"--process-id {pid} is out of range for --num-processes {num} "
                          f"(ids are 0..{num - 1})")

    given = {"--coordinator": coordinator, "--num-processes": num, "--process-id": pid}
    if all(v is not None for v in given.values()):
        if num == 1:
            return None
        return Launch("explicit", coordinator, num, pid, **timeouts)
    cluster = (detect or detect_cluster)()
    if cluster is not None:
        # jax fills in whatever is unset from the cluster; explicit values override it.
        return Launch(cluster, coordinator, num, pid, **timeouts)
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        have = [k for k, v in given.items() if v is not None]
        raise ConfigError(
            f"{' and '.join(have)} given without {' and '.join(missing)}: outside a detected "
            f"cluster all three are needed (flags or {ENV_COORDINATOR} / {ENV_NUM_PROCESSES} / "
            f"{ENV_PROCESS_ID})")
    return None


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator must be HOST:PORT, got {address!r}")


def detect_cluster() -> str | None:
    """Name of the cluster jax's `initialize()` would detect, when it runs > 1 process.

    Uses jax's own detectors (jax._src.clusters: Cloud TPU on GCE / GKE, SLURM, Open MPI,
    Kubernetes; the opt-in mpi4py one is skipped, as jax does) in jax's order, without
    initialising anything. A one-process allocation (a single-task SLURM step, a
    single-host TPU VM) counts as no cluster: there is nothing to coordinate.
    """
    import jax  # noqa: F401  (sets running_in_cloud_tpu_vm, which the TPU detectors read)
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:
            continue
        try:
            with warnings.catch_warnings():
                # k8s without the `kubernetes` package warns and reports absent: a plain pod.
                warnings.simplefilter("ignore")
                present = env.is_env_present()
            if not present:
                continue
            count = int(env.get_process_count())
        except Exception as e:  # a half-configured cluster: say so, then run alone
            log.warning("%s cluster detected but unusable for jax.distributed (%s: %s); "
                        "running as one process", env.__name__, type(e).__name__, e)
            return None
        return (env.name or env.__name__) if count > 1 else None
    return None


# ---------------------------------------------------------------- start-up

def initialize(launch: Launch | None) -> bool:
    """Joins the multi-process run described by `launch` (None: stay one process).

    Must run before any jax computation or device query. On CPU it selects gloo
    collectives, the implementation that works across processes without MPI.
    Returns:
      True when jax.distributed was initialised by this call.
    Raises:
      DistributedError when the coordinator cannot be reached in time or jax refuses.
    """
    if launch is None:
        return False
    import jax

    if jax.distributed.is_initialized():
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _native_stdout_to_stderr()
    kwargs: dict[str, Any] = dict(
        coordinator_address=launch.coordinator, num_processes=launch.num_processes,
        process_id=launch.process_id, initialization_timeout=launch.init_timeout_s,
        heartbeat_timeout_seconds=launch.heartbeat_timeout_s,
        shutdown_timeout_seconds=launch.shutdown_timeout_s)
    if launch.source == "explicit":
        kwargs["cluster_detection_method"] = "deactivate"
    # jax aborts the process (no exception) when the peers do not all connect within the
    # timeout, with a message about a dead task; say beforehand what it is waiting for.
    import sys
    import threading

    def waiting():
        print(f"[process {launch.process_id if launch.process_id is not None else '?'}"
              f"/{launch.num_processes or '?'}] still waiting for all processes to connect to "
              f"the coordinator {launch.coordinator or '(detected)'} ({launch.source}); giving "
              f"up after --init-timeout {launch.init_timeout_s} s", file=sys.stderr, flush=True)

    timer = threading.Timer(min(10.0, launch.init_timeout_s / 2), waiting)
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError, TypeError) as e:
        where = launch.coordinator or "the detected coordinator"
        raise DistributedError(
            f"jax.distributed.initialize ({launch.source}, coordinator {where}, "
            f"process {launch.process_id} of {launch.num_processes}) failed within "
            f"{launch.init_timeout_s} s: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    finally:
        timer.cancel()
    return True


def _native_stdout_to_stderr() -> None:
    """Point file descriptor 1 at stderr and give Python's sys.stdout the real stdout.

    gloo (the CPU collectives) prints a line on stdout from C++ for every connection, from
    several threads at once, so its pieces land inside the command's own output (the JSONL
    of `prorl-jax generate`, the report of `eval`). Native code writes to descriptor 1;
    Python's print goes through sys.stdout, which keeps a duplicate of the original.
    """
    import sys

    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # stdout is not a real file (captured by a test harness): leave it alone
    if fd != 1:
        return
    real = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(real, "w", buffering=1, encoding=sys.stdout.encoding,
                           errors=sys.stdout.errors)


def start(args: argparse.Namespace) -> bool:
    """CLI entry: resolve the launch from flags/environment, initialise, set up logging.

    Returns:
      True when this process is one of several (initialised here or by the caller before).
    """
    started = initialize(launch_from_args(args))
    import jax

    if not (started or jax.distributed.is_initialized()):
        return False
    setup_logging()
    log.info("process %d of %d: %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def run_command(args: argparse.Namespace, name: str, run, *,
                multi_process: bool | None = None) -> int:
    """Start-up, then `run(args)`: the CLI's wrapper around every subcommand.

    One process: `run`'s result or exception passes through unchanged. Several: a command
    not ready for it (`multi_process`; default: `name` in MULTI_PROCESS_COMMANDS) is
    refused (one line, exit 2 on every process); a failure in this process prints one prefixed line (a traceback for a bug) and ends the
    process with os._exit, skipping jax's shutdown barrier, so it neither waits for peers
    that may be stuck in a collective nor lets them hang: their collective breaks off, or
    their heartbeat checks end them within --heartbeat-timeout seconds.
    """
    if not start(args):
        return int(run(args) or 0)
    import sys
    import traceback

    prefix = f"[process {process_index()}/{process_count()}] "
    if not (name in MULTI_PROCESS_COMMANDS if multi_process is None else multi_process):
        try:
            if name in SINGLE_PROCESS_COMMANDS:
                raise DistributedError(f"prorl-jax {name} runs as one process, not "
                                       f"{process_count()}: {SINGLE_PROCESS_COMMANDS[name]}")
            require_single_process(f"prorl-jax {name}")
        except DistributedError as e:
            # Every process refuses alike: a normal exit, whose shutdown barrier lets all of
            # them leave together with exit 2 (no process outlives the coordinator).
            print(f"{prefix}prorl-jax {name}: error: {e}", file=sys.stderr)
            sys.exit(2)
    try:
        rc = int(run(args) or 0)
        sync(f"prorl-jax {name} finished")
        return rc
    except UserError as e:
        print(f"{prefix}prorl-jax {name}: error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print(f"{prefix}prorl-jax {name}: interrupted", file=sys.stderr)
        rc = 130
    except BaseException as e:  # noqa: BLE001  (SystemExit too: peers must not wait on us)
        if isinstance(e, SystemExit) and isinstance(e.code, int | None):
            rc = e.code or 0
        elif _lost_peer(e):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"{prefix}prorl-jax {name}: failed: a collective with the other processes "
                  f"broke off, so a peer process probably died (see its log first): {first}",
                  file=sys.stderr)
            rc = 1
        else:
            print(f"{prefix}prorl-jax {name}: failed:", file=sys.stderr)
            traceback.print_exc()
            rc = 1
    _hard_exit(rc)


# Marks of a cross-process collective that lost its peer (gloo on CPU, the coordination
# service elsewhere), as opposed to a local failure such as running out of memory.
_PEER_LOSS_MARKS = ("Connection reset by peer", "Connection closed by peer", "Gloo",
                    "heartbeat", "UNAVAILABLE", "Socket closed")


_PRIMARY_EXIT_GRACE_S = 3.0


def _lost_peer(e: BaseException) -> bool:
    import jax

    return isinstance(e, jax.errors.JaxRuntimeError) and any(m in str(e)
                                                             for m in _PEER_LOSS_MARKS)


def _hard_exit(rc: int):
    import sys
    import time

    if is_primary():
        # Process 0 hosts the coordination service: when it goes, every process still
        # running aborts. A failure that all processes hit alike (bad input) should end
        # each with its own message and exit code, so the others get a moment to go first.
        time.sleep(_PRIMARY_EXIT_GRACE_S)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """True on process 0, the one that writes metrics, summaries and console lines."""
    return process_index() == 0


def require_single_process(what: str) -> None:
    """Refuse a feature that does not run under several processes yet (one line, exit 2)."""
    n = process_count()
    if n > 1:
        import jax

        raise DistributedError(f"{what} does not run under multiple processes yet ({n} "
                               f"processes, {jax.device_count()} devices started); run it as "
                               "one process (see docs/distributed.md, 'Status')")


class _ProcessPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_prorl_prefixed", False):
            record.msg = f"{self.prefix}{record.msg}"
            record._prorl_prefixed = True
        return True


def setup_logging() -> None:
    """Non-primary processes log warnings and errors only, prefixed `[process i/n]`.

    Process 0 is left as configured. Safe to call more than once.
    """
    if is_primary():
        return
    prefix = f"[process {process_index()}/{process_count()}] "
    for name in ("", "prorl_jax"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _ProcessPrefix) for f in logger.filters):
            logger.addFilter(_ProcessPrefix(prefix))
    # Records of child loggers reach the root's handlers without passing the root's
    # filters, so the prefix also goes on every root handler.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ProcessPrefix) for f in handler.filters):
            handler.addFilter(_ProcessPrefix(prefix))


def console(*args, **kwargs) -> None:
    """print() on process 0 only (pass as the Trainer's `console`)."""
    if is_primary():
        print(*args, **kwargs)


# ---------------------------------------------------------------- global batches

def batch_sharding(global_shape: Sequence[int], mesh, rules, axes: Sequence[str | None]):
    """The NamedSharding `sharding.shard_batch` would give an array of `global_shape`."""
    from jax.sharding import NamedSharding

    from prorl_jax.sharding import logical_to_spec

    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, tuple(global_shape)))


def local_rows(global_shape: Sequence[int], mesh, rules, axes: Sequence[str | None]) -> slice:
    """Rows [start:stop) of dim 0 that this process must supply for `process_local_batch`.

    A process supplies the rows its own devices hold; rows replicated over processes
    (e.g. a batch that does not divide the mesh's batch axes) must be supplied by each.
    Raises:
      ValueError when this process's devices hold a non-contiguous set of rows.
    """
    sharding = batch_sharding(global_shape, mesh, rules, axes)
    spans = {idx[0].indices(global_shape[0])[:2]
             for idx in sharding.addressable_devices_indices_map(tuple(global_shape)).values()}
    start, stop = min(s for s, _ in spans), max(e for _, e in spans)
    covered = sorted(spans)
    reach = start
    for s, e in covered:
        if s > reach:
            raise ValueError(f"process {process_index()} holds non-contiguous rows {covered} "
                             f"of a batch of {global_shape[0]}")
        reach = max(reach, e)
    return slice(start, stop)


def process_local_batch(local, mesh, rules, axes: Sequence[str | None],
                        global_rows: int | None = None):
    """A global jax.Array from this process's rows; each process places only its shards.

    Args:
      local: numpy array [b, ...]: rows `local_rows(...)` of the global batch (in a
        single-process run: the whole batch).
      mesh, rules: the global mesh and its sharding rules.
      axes: logical names per dim, e.g. ("batch", "seq").
      global_rows: rows of the global batch (default: b x process count, i.e. dim 0 is
        split evenly over the processes).
    Returns:
      jax.Array of shape [global_rows, ...] sharded like `sharding.shard_batch` would.
    Raises:
      ValueError when `local` is not the slice this process must supply.
    """
    import jax
    import numpy as np

    local = np.asarray(local)
    rows = local.shape[0] * process_count() if global_rows is None else int(global_rows)
    global_shape = (rows, *local.shape[1:])
    mine = local_rows(global_shape, mesh, rules, axes)
    if mine.stop - mine.start != local.shape[0]:
        raise ValueError(
            f"process {process_index()} must supply rows {mine.start}:{mine.stop} "
            f"({mine.stop - mine.start} rows) of the global batch of {rows}, got "
            f"{local.shape[0]} rows")
    sharding = batch_sharding(global_shape, mesh, rules, axes)
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def check_same(what: str, x) -> None:
    """Raises unless every process holds the same bytes for host array `x` (a collective):
    a guard on decisions every process computes by itself and must agree on."""
    import numpy as np

    if process_count() == 1:
        return
    # Gathered as raw bytes: jax would turn 64-bit values into 32-bit ones on the way.
    raw = np.frombuffer(np.ascontiguousarray(x).tobytes(), np.uint8)
    everyone = host_allgather(raw)
    differ = [i for i, y in enumerate(everyone) if not np.array_equal(y, raw)]
    if differ:
        raise RuntimeError(f"processes {differ} disagree with process {process_index()} on "
                           f"{what}: a multi-process run must compute it identically")


# ---------------------------------------------------------------- host gathers

def host_allgather(x):
    """Stack a small host array from every process: [P, *x.shape], identical everywhere.

    Every process must call it with the same shape and dtype (a collective).
    """
    import numpy as np

    x = np.asarray(x)
    if process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def gather_rows(local, rows: slice, total: int):
    """The global [total, ...] host array from each process's rows [rows.start:rows.stop).

    Rows several processes hold (replicated) must agree; every process gets the same
    result, bit for bit. Every process must call it (a collective); the processes' row
    counts may differ (e.g. `split_rows` of a total that does not divide evenly).
    """
    import numpy as np

    local = np.asarray(local)
    if local.shape[0] != rows.stop - rows.start:
        raise ValueError(f"process {process_index()} passed {local.shape[0]} rows for "
                         f"rows {rows.start}:{rows.stop}")
    starts = host_allgather(np.asarray([rows.start, rows.stop], np.int64))
    # host_allgather needs one shape everywhere: pad every part to the longest.
    width = int((starts[:, 1] - starts[:, 0]).max())
    padded = np.zeros((width, *local.shape[1:]), local.dtype)
    padded[:local.shape[0]] = local
    parts = host_allgather(padded)
    out = np.zeros((total, *local.shape[1:]), local.dtype)
    seen = np.zeros(total, bool)
    for (start, stop), part in zip(starts, parts, strict=True):
        part = part[:stop - start]
        if seen[start:stop].any() and not np.array_equal(out[start:stop], part):
            raise ValueError(f"processes disagree on replicated rows {start}:{stop}")
        out[start:stop] = part
        seen[start:stop] = True
    if not seen.all():
        raise ValueError(f"rows {np.flatnonzero(~seen).tolist()[:8]}... of {total} were "
                         "supplied by no process")
    return out


def split_rows(total: int) -> slice:
    """This process's contiguous share of `total` rows of host-side work (decoding texts,
    scoring rewards): process i of P takes rows [i * total // P, (i + 1) * total // P).

    The same on every process for the same `total`; one process takes all rows. Pair it
    with `gather_rows(values, split_rows(total), total)` to give every process the result.
    """
    p, i = process_count(), process_index()
    return slice(i * total // p, (i + 1) * total // p)


def fetch(tree):
    """Host numpy copies of a tree of (possibly non-addressable) jax arrays.

    One process: `np.asarray` of each leaf. Several: leaves that span other processes'
    devices (a batch-sharded sampler output) cannot be read locally (`np.asarray` raises,
    the tunix #698 crash); they are all-gathered in one collective, so every process must
    call `fetch` on the same tree, in the same order. Fully replicated and process-local
    arrays are read without communication. Every process gets identical values.
    """
    import jax
    import numpy as np

    leaves, treedef = jax.tree.flatten(tree)
    far = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)
           and not x.is_fully_addressable and not x.is_fully_replicated]
    out = [np.asarray(x) if i not in far else None for i, x in enumerate(leaves)]
    if far:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather([leaves[i] for i in far], tiled=True)
        for i, x in zip(far, gathered, strict=True):
            out[i] = np.asarray(x)
    return jax.tree.unflatten(treedef, out)


def sampling_mesh():
    """The mesh `prorl-jax eval` and `generate` sample on.

    One process: None (the sampler runs on one device, as it always has). Several: a
    data-parallel mesh over every global device (rows spread over all of them; the sampler's
    SAMPLE_RULES keep full params on each device, so the model must fit on one).
    """
    if process_count() == 1:
        return None
    import jax

    from prorl_jax.sharding import make_mesh

    return make_mesh(data=jax.device_count())


def sync(name: str) -> None:
    """Barrier: returns once every process has reached `sync(name)` (no-op alone)."""
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
