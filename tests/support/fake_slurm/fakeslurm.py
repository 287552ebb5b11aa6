"""A fake SLURM cluster of one machine, for tests: ``sbatch``, ``squeue``, ``scancel``, ``srun``, ``scontrol``.

It stands in for the scheduler (which this machine does not have) and speaks the command-line protocol
that datatrove's SlurmPipelineExecutor and arctic_pretrain's wait loop use:

* ``sbatch [options] script``: options on the command line override ``#SBATCH`` directives (read up to the
  first command line of the script, as sbatch does); unknown options are refused ("unrecognized option");
  options whose scheduling meaning is not emulated (``--hold``, ``--begin``, several nodes) are refused
  too rather than ignored. Prints ``Submitted batch job <id>`` (``--parsable``: ``<id>``). The script is
  copied at submission (datatrove deletes its temporary file as soon as sbatch returns), the environment
  is captured per ``--export`` (ALL by default, ``ALL,NAME=value``, ``NONE``, a name list).
* ``--array=0-N%M`` (also ``1,3,5`` and ``0-15:4``) runs the script once per index with SLURM_ARRAY_JOB_ID,
  SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT/MIN/MAX, SLURM_JOB_ID (one per task), SLURM_JOB_NAME,
  SLURM_JOB_PARTITION, SLURM_CPUS_PER_TASK, SLURM_JOB_NODELIST/SLURM_NODELIST, SLURM_SUBMIT_DIR, ...,
  in the submission directory (or ``--chdir``), at most M at a time and within FAKE_SLURM_CPUS cores
  (``--cpus-per-task`` each). ``--output``/``--error`` patterns (%A %a %j %x %u %N %%) are expanded; a
  folder that does not exist fails the task, as on a real cluster. ``--time`` is enforced (TIMEOUT).
* ``--dependency=afterok:ID[:ID],afterany:ID,...`` (also ``after``, ``afternotok``, ``singleton``, ``?``
  for "any"): a job starts only once its dependencies are satisfied; an array job is "ok" only when every
  task exited 0. A dependency that can never be satisfied leaves the job PENDING with reason
  DependencyNeverSatisfied, or cancels it with ``--kill-on-invalid-dep=yes``. A dependency on an
  unknown job is refused at submission ("Job dependency problem").
* Several nodes (``--nodes N``, up to the FAKE_SLURM_NODES names, all of them this machine): SLURM_JOB_NODELIST,
  SLURM_JOB_NUM_NODES, SLURM_NTASKS (= nodes x ``--ntasks-per-node``).
* ``srun [-l] [-n N] [-N N] [--ntasks-per-node N] [-K] cmd``: a job step inside the allocation: N copies
  spread block-wise over the nodes with SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID/SLURMD_NODENAME/SLURM_STEP_ID;
  each task in its own process group, which the signals srun receives reach whole (slurmstepd's process
  tracking); ``-l`` prefixes output lines with ``<task>: ``; the exit code is the highest of the tasks'.
  Outside a job (no SLURM_JOB_ID) srun first gets an allocation, as the real one does: a job with its
  allocation options (``--gpus 1``, ``-N 2``, ``-p gpu``, ...) whose batch script runs the same srun as its
  step; it waits for the job, relays the job's output and exits with its exit code.
* ``--signal=[B:]SIG@T`` with ``--time``: SIG T seconds before the limit, to the steps (or the batch shell).
* ``squeue [-h] [-j IDS] [-u USER] [-n NAME] [-t STATES] [-o FORMAT] [-r]``: default states are pending,
  running, completing; ``-j`` shows every state; pending array tasks are one row (``ID_[2-9%2]``) unless
  ``-r``. Format fields: %i %F %K %A %j %P %T %t %r %R %u %M %D %C %E, with ``%.N`` widths.
* ``scancel [-s SIG [-b|-f]] [-u USER] [-n NAME] ID[_IDX] ...``: a signal goes to the job steps' processes,
  ``-b`` to the batch shell only, ``-f`` to both; without ``-s`` it cancels. ``scontrol show hostnames|job``,
  ``scontrol requeue ID`` (the task goes back to PENDING once its process exits).

Every sbatch call is appended to ``submissions.jsonl`` (argv, directives, the resolved options, the id), so
a test can assert what was submitted. State lives in $FAKE_SLURM_STATE (default /tmp/fake-slurm-<uid>).
A runner process (slurmctld + slurmd in one) is started by sbatch when none is alive and exits once the
queue has had nothing to run for FAKE_SLURM_IDLE_S seconds (default 2). Other knobs: FAKE_SLURM_CPUS
(default: this machine's cores), FAKE_SLURM_PARTITIONS (comma list, first is the default; default
``debug``; other partitions are refused), FAKE_SLURM_MAX_ARRAY_SIZE (1001, SLURM's default MaxArraySize).

Not emulated: memory limits (recorded, not enforced), priorities/fair share (first come,
first served), accounting (sacct), hold/release, heterogeneous jobs, MinJobAge (finished jobs stay listed
with ``-j``/``-t all`` until the state folder is deleted).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
COMPACT = {"PENDING": "PD", "RUNNING": "R", "COMPLETED": "CD", "FAILED": "F", "CANCELLED": "CA", "TIMEOUT": "TO",
           "COMPLETING": "CG"}
DEFAULT_STATES = ("PENDING", "RUNNING", "COMPLETING")

# sbatch options: long name -> takes a value; short letters -> long names
VALUED = {
    "account", "array", "chdir", "comment", "constraint", "cpus-per-gpu", "cpus-per-task", "dependency",
    "distribution", "error", "export", "gpus", "gpus-per-node", "gpus-per-task", "gres", "hint", "input",
    "job-name", "kill-on-invalid-dep", "licenses", "mail-type", "mail-user", "mem", "mem-per-cpu",
    "mem-per-gpu", "nice", "nodelist", "nodes", "ntasks", "ntasks-per-node", "open-mode", "output",
    "partition", "qos", "reservation", "signal", "time", "time-min", "tmp", "wckey", "exclude",
    "threads-per-core", "cpu-freq", "propagate",
}
FLAGS = {"parsable", "requeue", "no-requeue", "wait", "exclusive", "overcommit", "oversubscribe", "quiet",
         "verbose", "contiguous", "spread-job", "use-min-nodes", "no-kill", "get-user-env", "ignore-pbs"}
NOT_EMULATED = {"hold", "begin", "deadline", "test-only", "export-file", "het-group", "batch", "clusters",
                "wrap"}
SHORT = {"a": "array", "A": "account", "c": "cpus-per-task", "d": "dependency", "D": "chdir", "e": "error",
         "o": "output", "J": "job-name", "n": "ntasks", "N": "nodes", "p": "partition", "q": "qos",
         "t": "time", "G": "gpus", "w": "nodelist", "x": "exclude", "C": "constraint", "i": "input",
         "H": "hold", "W": "wait", "Q": "quiet", "v": "verbose", "k": "no-kill", "s": "oversubscribe",
         "O": "overcommit", "b": "begin", "L": "licenses"}


class SlurmError(Exception):
    """A refusal, printed the way the real command prints it; exit status 1."""


# ---------------------------------------------------------------- state


def state_dir() -> Path:
    path = Path(os.environ.get("FAKE_SLURM_STATE") or os.environ.get("SLURM_FAKE_STATE")
                or f"/tmp/fake-slurm-{os.getuid()}")
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    (path / "scripts").mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def locked(state: Path):
    with open(state / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_jobs(state: Path) -> dict[int, dict]:
    jobs = {}
    for f in (state / "jobs").glob("*.json"):
        job = json.loads(f.read_text())
        jobs[job["id"]] = job
    return dict(sorted(jobs.items()))


def save_job(state: Path, job: dict) -> None:
    tmp = state / "jobs" / f".{job['id']}.json.tmp"
    tmp.write_text(json.dumps(job, indent=1))
    os.replace(tmp, state / "jobs" / f"{job['id']}.json")


def next_ids(state: Path, count: int) -> int:
    f = state / "next_id"
    first = int(f.read_text()) if f.is_file() else 1001
    f.write_text(str(first + count))
    return first


def job_state(job: dict) -> str:
    states = [t["state"] for t in job["tasks"].values()]
    if "RUNNING" in states:
        return "COMPLETING" if job.get("cancelled") else "RUNNING"
    if "PENDING" in states:
        return "PENDING"
    if all(s == "COMPLETED" for s in states):
        return "COMPLETED"
    for s in ("CANCELLED", "TIMEOUT"):
        if s in states:
            return s
    return "FAILED"


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_names() -> list[str]:
    """FAKE_SLURM_NODES (comma list) names the cluster's nodes, all of them this machine; loopback
    addresses (127.0.0.1,127.0.0.2) make a multi-node job's rendezvous resolvable. Default: this host."""
    names = [n for n in os.environ.get("FAKE_SLURM_NODES", "").split(",") if n]
    return names or [socket.gethostname().split(".")[0]]


def step_pgids(state: Path, job_id: int) -> list[int]:
    """Process groups of the job's running steps' tasks (srun registers them)."""
    pgids = []
    for f in (state / "steps").glob(f"{job_id}.*.json"):
        with contextlib.suppress(OSError, ValueError):
            pgids += json.loads(f.read_text())["pgids"]
    return pgids


def signal_groups(pgids: list[int], signum: int) -> None:
    """Signal every process of each task: its process group and all its descendants, also those that
    started their own session (torchrun puts each rank in one), as slurmstepd's cgroup tracking reaches."""
    if not pgids:
        return
    parent, group = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
            group[int(stat.parent.name)] = int(fields[2])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    targets = {pid for pid, pgrp in group.items() if pgrp in pgids}
    stack = list(pgids)
    while stack:
        pid = stack.pop()
        if pid in parent:
            targets.add(pid)
        stack.extend(children.get(pid, []))
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


# ---------------------------------------------------------------- parsing helpers


def parse_time(value: str) -> int | None:
    """SLURM time formats -> seconds (None: no limit)."""
    v = value.strip()
    if v.lower() in ("infinite", "unlimited", "-1"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", v)
    if not m:
        raise SlurmError("sbatch: error: Invalid --time specification")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # days-hours[:minutes[:seconds]]
        h, mi, s = (nums + [0, 0])[:3]
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if len(nums) == 1:
        return nums[0] * 60  # minutes
    if len(nums) == 2:
        return nums[0] * 60 + nums[1]  # minutes:seconds
    return nums[0] * 3600 + nums[1] * 60 + nums[2]


def parse_signal_option(value: str | None) -> tuple[bool, int, int] | None:
    """``--signal=[{R|B}:]SIG[@TIME]`` -> (batch shell only, signal number, seconds before the limit)."""
    if not value:
        return None
    m = re.fullmatch(r"(?:([RB]+):)?(\w+)(?:@(\d+))?", value)
    if not m:
        raise SlurmError(f"sbatch: error: Invalid --signal specification: {value}")
    name = m.group(2).upper()
    signum = int(name) if name.isdigit() else signal.Signals["SIG" + name.removeprefix("SIG")]
    return "B" in (m.group(1) or ""), int(signum), int(m.group(3) or 60)


def parse_mem_mb(value: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", value.strip(), re.IGNORECASE)
    if not m:
        raise SlurmError(f"sbatch: error: invalid memory constraint: {value}")
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2).upper()]
    return int(int(m.group(1)) * scale)


def parse_array(spec: str, max_size: int) -> tuple[list[int], int | None]:
    limit = None
    if "%" in spec:
        spec, lim = spec.split("%", 1)
        if not lim.isdigit() or int(lim) < 1:
            raise SlurmError("sbatch: error: Invalid job array specification")
        limit = int(lim)
    indices: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not m:
            raise SlurmError("sbatch: error: Invalid job array specification")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3) or 1)
        if hi < lo or step < 1:
            raise SlurmError("sbatch: error: Invalid job array specification")
        indices.extend(range(lo, hi + 1, step))
    if not indices or max(indices) >= max_size:
        raise SlurmError("sbatch: error: Batch job submission failed: Invalid job array specification")
    return sorted(set(indices)), limit


def parse_dependency(spec: str) -> tuple[str, list[tuple[str, str]]]:
    """'afterok:1:2,afterany:3' -> ('all', [(afterok, 1), (afterok, 2), (afterany, 3)]); '?' separates 'any'."""
    if not spec:
        return "all", []
    mode = "any" if "?" in spec else "all"
    items = []
    for part in re.split(r"[,?]", spec):
        if part == "singleton":
            items.append(("singleton", ""))
            continue
        kind, _, ids = part.partition(":")
        if kind not in ("after", "afterany", "afterok", "afternotok") or not ids:
            raise SlurmError("sbatch: error: Batch job submission failed: Job dependency problem")
        for jid in ids.split(":"):
            if not re.fullmatch(r"\d+(_\d+)?", jid.split("+")[0]):
                raise SlurmError("sbatch: error: Batch job submission failed: Job dependency problem")
            items.append((kind, jid.split("+")[0]))
    return mode, items


def expand_hostlist(spec: str) -> list[str]:
    hosts = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", spec):
        m = re.fullmatch(r"(.*?)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{width}d}{suffix}")
    return hosts


def parse_options(args: list[str], prog: str, stop_at_positional: bool = True) -> tuple[dict, list[str]]:
    """sbatch-style options -> ({long name: value or ''}, remaining positionals)."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return opts, args[i + 1:]
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if name in NOT_EMULATED:
                raise SlurmError(f"{prog}: error: fake SLURM does not emulate --{name}")
            if name in FLAGS:
                opts[name] = value
            elif name in VALUED:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise SlurmError(f"{prog}: option '--{name}' requires an argument")
                    value = args[i]
                opts[name] = value
            else:
                raise SlurmError(f"{prog}: unrecognized option '--{name}'\nTry \"{prog} --help\" for more "
                                 "information")
        elif a.startswith("-") and len(a) > 1:
            letter = a[1]
            name = SHORT.get(letter)
            if name is None:
                raise SlurmError(f"{prog}: invalid option -- '{letter}'\nTry \"{prog} --help\" for more information")
            if name in NOT_EMULATED:
                raise SlurmError(f"{prog}: error: fake SLURM does not emulate -{letter} (--{name})")
            if name in FLAGS:
                opts[name] = ""
            else:
                value = a[2:]
                if not value:
                    i += 1
                    if i >= len(args):
                        raise SlurmError(f"{prog}: option requires an argument -- '{letter}'")
                    value = args[i]
                opts[name] = value
        elif stop_at_positional:
            return opts, args[i:]
        i += 1
    return opts, []


def read_directives(script: str) -> list[str]:
    """#SBATCH lines up to the first command, as sbatch reads them."""
    args: list[str] = []
    for line in script.splitlines()[1:]:
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            break
        if s.startswith("#SBATCH"):
            args.extend(shlex.split(s[len("#SBATCH"):], comments=True))
    return args


def export_env(spec: str, env: dict[str, str]) -> dict[str, str]:
    parts = [p for p in spec.split(",") if p] if spec else ["ALL"]
    out: dict[str, str] = {}
    if parts[0] == "ALL":
        out = dict(env)
        parts = parts[1:]
    elif parts[0] == "NONE":
        parts = parts[1:]
    for p in parts:
        name, eq, value = p.partition("=")
        if eq:
            out[name] = value
        elif name in env:
            out[name] = env[name]
    return {k: v for k, v in out.items() if not k.startswith("SLURM_")}


# ---------------------------------------------------------------- sbatch


def sbatch(argv: list[str]) -> int:
    state = state_dir()
    cli, rest = parse_options(argv, "sbatch")
    if not rest:
        raise SlurmError("sbatch: error: fake sbatch needs a script file (reading from stdin is not emulated)")
    script_path, script_args = Path(rest[0]), rest[1:]
    try:
        script = script_path.read_text()
    except OSError as err:
        raise SlurmError(f"sbatch: error: Unable to open file {script_path}") from err
    if not script.startswith("#!"):
        raise SlurmError("sbatch: error: This does not look like a batch script.  The first\n"
                         "sbatch: error: line must start with #! followed by the path to an interpreter.")
    directives = read_directives(script)
    opts, _ = parse_options(directives, "sbatch", stop_at_positional=False)
    opts.update(cli)  # the command line wins over #SBATCH lines

    partitions = [p for p in os.environ.get("FAKE_SLURM_PARTITIONS", "debug").split(",") if p]
    partition = opts.get("partition", partitions[0])
    if partition not in partitions:
        raise SlurmError("sbatch: error: Batch job submission failed: Invalid partition name specified")
    nodes = int(opts.get("nodes", "1").split("-")[0])
    if not 1 <= nodes <= len(node_names()):
        raise SlurmError("sbatch: error: Batch job submission failed: Requested node configuration is not "
                         f"available (fake SLURM has {len(node_names())} node(s): FAKE_SLURM_NODES)")
    time_limit = parse_time(opts["time"]) if "time" in opts else None
    parse_signal_option(opts.get("signal"))
    for key in ("mem", "mem-per-cpu"):
        if key in opts:
            parse_mem_mb(opts[key])
    cpus = int(opts.get("cpus-per-task", "1"))
    max_array = int(os.environ.get("FAKE_SLURM_MAX_ARRAY_SIZE", "1001"))
    indices, limit = parse_array(opts["array"], max_array) if "array" in opts else ([-1], None)
    mode, deps = parse_dependency(opts.get("dependency", ""))
    kill_invalid = opts.get("kill-on-invalid-dep", "no").lower() in ("yes", "y", "1")
    if cpus > int(os.environ.get("FAKE_SLURM_CPUS", os.cpu_count() or 1)):
        raise SlurmError("sbatch: error: Batch job submission failed: Requested node configuration is not "
                         "available")
    cwd = os.getcwd()
    chdir = opts.get("chdir", cwd)
    name = opts.get("job-name", script_path.name)
    default_out = "slurm-%A_%a.out" if "array" in opts else "slurm-%j.out"

    with locked(state):
        jobs = load_jobs(state)
        for _, jid in deps:
            if jid and int(jid.split("_")[0]) not in jobs:
                raise SlurmError("sbatch: error: Batch job submission failed: Job dependency problem")
        first = next_ids(state, len(indices))
        saved = state / "scripts" / f"{first}.sh"
        saved.write_text(script)
        saved.chmod(0o755)
        job = {
            "id": first, "name": name, "partition": partition, "user": getpass.getuser(), "uid": os.getuid(),
            "submit_time": time.time(), "submit_dir": cwd, "chdir": chdir, "script": str(saved),
            "script_args": script_args, "argv": ["sbatch", *argv], "options": opts,
            "array": indices if "array" in opts else None, "array_limit": limit,
            "dependency": opts.get("dependency", ""), "dependency_mode": mode, "kill_on_invalid_dep": kill_invalid,
            "cpus_per_task": cpus, "nodes": nodes, "time_limit": time_limit, "output": opts.get("output", default_out),
            "error": opts.get("error"), "open_mode": opts.get("open-mode", "truncate"),
            "env": export_env(opts.get("export", "ALL"), dict(os.environ)),
            "tasks": {str(idx): {"job_id": first + k, "state": "PENDING", "pid": None, "exit_code": None,
                                 "start": None, "end": None, "restarts": 0, "requeue": False}
                      for k, idx in enumerate(indices)},
            "reason": "Dependency" if deps else "None", "cancelled": False,
        }
        save_job(state, job)
        with open(state / "submissions.jsonl", "a") as log:
            log.write(json.dumps({"job_id": first, "argv": job["argv"], "cwd": cwd, "directives": directives,
                                  "options": opts, "name": name, "partition": partition,
                                  "array": job["array"], "array_limit": limit, "dependency": job["dependency"],
                                  "script": str(saved)}) + "\n")
        ensure_runner(state)
    print(first if "parsable" in opts else f"Submitted batch job {first}", flush=True)
    if "wait" in opts:
        while True:
            time.sleep(0.2)
            with locked(state):
                job = load_jobs(state)[first]
            if job_state(job) in TERMINAL:
                codes = [t["exit_code"] or 0 for t in job["tasks"].values()]
                return 0 if job_state(job) == "COMPLETED" else max(max(codes), 1)
    return 0


def ensure_runner(state: Path) -> None:
    """Called with the lock held: start the runner unless one is alive."""
    pidfile = state / "runner.pid"
    if pidfile.is_file() and pid_alive(int(pidfile.read_text() or 0)):
        return
    log = open(state / "runner.log", "a")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "runner", str(state)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True, close_fds=True)
    pidfile.write_text(str(proc.pid))


# ---------------------------------------------------------------- runner (slurmctld + slurmd)


class Runner:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.procs: dict[tuple[int, str], tuple[subprocess.Popen, list]] = {}
        self.cpus = int(os.environ.get("FAKE_SLURM_CPUS", os.cpu_count() or 1))
        self.idle_s = float(os.environ.get("FAKE_SLURM_IDLE_S", "2"))
        self.kill_wait = float(os.environ.get("FAKE_SLURM_KILL_WAIT", "5"))
        self.node = socket.gethostname().split(".")[0]
        self.stop = False

    def main(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        with locked(self.state):  # tasks a previous runner left RUNNING died with it (NODE_FAIL)
            for job in load_jobs(self.state).values():
                for task in job["tasks"].values():
                    if task["state"] == "RUNNING":
                        if pid_alive(task["pid"]):
                            with contextlib.suppress(ProcessLookupError):
                                os.killpg(task["pid"], signal.SIGKILL)
                        task.update(state="FAILED", exit_code=-1, end=time.time(), pid=None)
                save_job(self.state, job)
        idle_since = None
        while True:
            with locked(self.state):
                jobs = load_jobs(self.state)
                self.reap(jobs)
                if self.stop:
                    self.shutdown(jobs)
                    (self.state / "runner.pid").unlink(missing_ok=True)
                    return 0
                self.enforce_limits(jobs)
                self.resolve_dependencies(jobs)
                self.schedule(jobs)
                runnable = any(t["state"] == "PENDING" and j["reason"] != "DependencyNeverSatisfied"
                               and not j["cancelled"] for j in jobs.values() for t in j["tasks"].values())
                if self.procs or runnable:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > self.idle_s:
                    (self.state / "runner.pid").unlink(missing_ok=True)
                    return 0
            time.sleep(0.1)

    def _on_term(self, *_):
        self.stop = True

    def shutdown(self, jobs: dict) -> None:
        for (jid, idx), (proc, _) in self.procs.items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            signal_groups(step_pgids(self.state, jobs[jid]["tasks"][idx]["job_id"]), signal.SIGKILL)
            proc.wait()
            task = jobs[jid]["tasks"][idx]
            task.update(state="CANCELLED", end=time.time(), exit_code=-9)
            save_job(self.state, jobs[jid])
        self.procs.clear()

    def reap(self, jobs: dict) -> None:
        for key, (proc, handles) in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            for h in handles:
                h.close()
            del self.procs[key]
            jid, idx = key
            job = jobs[jid]
            task = job["tasks"][idx]
            signal_groups(step_pgids(self.state, task["job_id"]), signal.SIGKILL)  # the job's end ends its steps
            for f in (self.state / "steps").glob(f"{task['job_id']}.*.json"):
                f.unlink(missing_ok=True)
            task.update(exit_code=code, end=time.time(), pid=None)
            if task.get("timed_out"):
                task["state"] = "TIMEOUT"
            elif job["cancelled"] or task.get("cancelled"):
                task["state"] = "CANCELLED"
            elif task["requeue"]:
                task.update(state="PENDING", requeue=False, restarts=task["restarts"] + 1, start=None, warned=None)
            else:
                task["state"] = "COMPLETED" if code == 0 else "FAILED"
            save_job(self.state, job)

    def enforce_limits(self, jobs: dict) -> None:
        """--time: SIGTERM at the limit (state TIMEOUT); scancel'ed or timed-out tasks get SIGKILL after
        FAKE_SLURM_KILL_WAIT seconds (SLURM's KillWait)."""
        now = time.time()
        for (jid, idx), (proc, _) in self.procs.items():
            job, task = jobs[jid], jobs[jid]["tasks"][idx]
            limit = job["time_limit"]
            if limit is not None and now - task["start"] > limit and not task.get("timed_out"):
                task["timed_out"] = now
                save_job(self.state, job)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            warn = parse_signal_option(job["options"].get("signal"))
            if warn and limit is not None and now - task["start"] > limit - warn[2] and not task.get("warned"):
                task["warned"] = now  # --signal=[B:]SIG@T: T seconds before the time limit
                save_job(self.state, job)
                if warn[0]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, warn[1])
                else:
                    signal_groups(step_pgids(self.state, task["job_id"]), warn[1])
            since = task.get("timed_out") or task.get("kill_sent")
            if since and now - since > self.kill_wait:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                signal_groups(step_pgids(self.state, task["job_id"]), signal.SIGKILL)

    def dependency_status(self, job: dict, jobs: dict) -> str:
        """'ok' | 'wait' | 'never'."""
        mode, items = parse_dependency(job["dependency"])
        results = []
        for kind, jid in items:
            if kind == "singleton":
                others = [j for j in jobs.values() if j["id"] != job["id"] and j["name"] == job["name"]
                          and j["user"] == job["user"] and j["id"] < job["id"] and job_state(j) not in TERMINAL]
                results.append("wait" if others else "ok")
                continue
            base, _, idx = jid.partition("_")
            dep = jobs.get(int(base))
            if dep is None:
                results.append("never")
                continue
            st = job_state({"tasks": {idx: dep["tasks"][idx]}}) if idx else job_state(dep)
            started = st != "PENDING"
            done = st in TERMINAL
            if kind == "after":
                results.append("ok" if started else "wait")
            elif kind == "afterany":
                results.append("ok" if done else "wait")
            elif kind == "afterok":
                results.append("wait" if not done else ("ok" if st == "COMPLETED" else "never"))
            else:  # afternotok
                results.append("wait" if not done else ("never" if st == "COMPLETED" else "ok"))
        if not results:
            return "ok"
        if mode == "all":
            return "never" if "never" in results else ("ok" if all(r == "ok" for r in results) else "wait")
        return "ok" if "ok" in results else ("never" if all(r == "never" for r in results) else "wait")

    def resolve_dependencies(self, jobs: dict) -> None:
        for job in jobs.values():
            if job["cancelled"] or job["reason"] not in ("Dependency",):
                continue
            status = self.dependency_status(job, jobs)
            if status == "ok":
                job["reason"] = "None"
            elif status == "never":
                job["reason"] = "DependencyNeverSatisfied"
                if job["kill_on_invalid_dep"]:
                    job["cancelled"] = True
                    for t in job["tasks"].values():
                        if t["state"] == "PENDING":
                            t.update(state="CANCELLED", end=time.time())
            else:
                continue
            save_job(self.state, job)

    def schedule(self, jobs: dict) -> None:
        used = sum(jobs[jid]["cpus_per_task"] for jid, _ in self.procs)
        for job in jobs.values():
            if job["cancelled"] or job["reason"] != "None":
                continue
            running = sum(1 for t in job["tasks"].values() if t["state"] == "RUNNING")
            for idx, task in job["tasks"].items():
                if task["state"] != "PENDING":
                    continue
                if job["array_limit"] is not None and running >= job["array_limit"]:
                    break
                if used + job["cpus_per_task"] > self.cpus:
                    return
                self.launch(job, idx, task)
                used += job["cpus_per_task"]
                running += 1

    def expand(self, pattern: str, job: dict, idx: str, task: dict) -> str:
        subs = {"A": str(job["id"]), "a": idx if job["array"] is not None else "4294967294",
                "j": str(task["job_id"]), "x": job["name"], "u": job["user"], "N": self.node, "%": "%"}
        return re.sub(r"%(\d*)([AajxuN%])", lambda m: subs[m.group(2)].zfill(int(m.group(1) or 0)), pattern)

    def env(self, job: dict, idx: str, task: dict) -> dict[str, str]:
        env = dict(job["env"])
        nodes = job.get("nodes", 1)
        hosts = node_names()[:nodes]
        nodelist = ",".join(hosts)
        env.update({
            "SLURM_JOB_ID": str(task["job_id"]), "SLURM_JOBID": str(task["job_id"]), "SLURM_JOB_NAME": job["name"],
            "SLURM_JOB_PARTITION": job["partition"], "SLURM_JOB_USER": job["user"], "SLURM_JOB_UID": str(job["uid"]),
            "SLURM_JOB_NODELIST": nodelist, "SLURM_NODELIST": nodelist, "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_NNODES": str(nodes), "SLURM_NODEID": "0", "SLURMD_NODENAME": hosts[0], "SLURM_CLUSTER_NAME": "fake",
            "SLURM_SUBMIT_DIR": job["submit_dir"], "SLURM_SUBMIT_HOST": socket.gethostname(),
            "SLURM_CPUS_ON_NODE": str(job["cpus_per_task"]), "SLURM_JOB_CPUS_PER_NODE": str(job["cpus_per_task"]),
            "SLURM_RESTART_COUNT": str(task["restarts"]), "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_TASKS_PER_NODE": "1", "SLURM_FAKE_STATE": str(self.state),
        })
        opts = job["options"]
        if "cpus-per-task" in opts:
            env["SLURM_CPUS_PER_TASK"] = opts["cpus-per-task"]
        if "mem-per-cpu" in opts:
            env["SLURM_MEM_PER_CPU"] = str(parse_mem_mb(opts["mem-per-cpu"]))
        if "qos" in opts:
            env["SLURM_JOB_QOS"] = opts["qos"]
        if "ntasks" in opts:
            env["SLURM_NTASKS"] = env["SLURM_NPROCS"] = opts["ntasks"]
        elif "ntasks-per-node" in opts:
            env["SLURM_NTASKS"] = env["SLURM_NPROCS"] = str(nodes * int(opts["ntasks-per-node"]))
        if "ntasks-per-node" in opts:
            env["SLURM_NTASKS_PER_NODE"] = opts["ntasks-per-node"]
        if job["array"] is not None:
            arr = job["array"]
            env.update({"SLURM_ARRAY_JOB_ID": str(job["id"]), "SLURM_ARRAY_TASK_ID": idx,
                        "SLURM_ARRAY_TASK_COUNT": str(len(arr)), "SLURM_ARRAY_TASK_MIN": str(min(arr)),
                        "SLURM_ARRAY_TASK_MAX": str(max(arr))})
        return env

    def launch(self, job: dict, idx: str, task: dict) -> None:
        mode = "a" if task["restarts"] or job["open_mode"] == "append" else "w"
        cwd = job["chdir"]
        out = os.path.join(cwd, self.expand(job["output"], job, idx, task))
        err = os.path.join(cwd, self.expand(job["error"], job, idx, task)) if job["error"] else out
        task.update(start=time.time(), state="RUNNING")
        try:
            handles = [open(out, mode)]  # noqa: SIM115 - closed when the task is reaped
            if err != out:
                handles.append(open(err, mode))  # noqa: SIM115
            proc = subprocess.Popen([job["script"], *job["script_args"]], cwd=cwd, env=self.env(job, idx, task),
                                    stdin=subprocess.DEVNULL, stdout=handles[0], stderr=handles[-1],
                                    start_new_session=True)
        except OSError as exc:  # an output folder that does not exist, a missing chdir: the task fails
            print(f"job {job['id']}_{idx}: launch failed: {exc}", flush=True)
            task.update(state="FAILED", exit_code=1, end=time.time())
            save_job(self.state, job)
            return
        task["pid"] = proc.pid
        self.procs[(job["id"], idx)] = (proc, handles)
        save_job(self.state, job)


# ---------------------------------------------------------------- srun (a job step)


def srun(argv: list[str]) -> int:
    """A job step: ``-n`` tasks (default: SLURM_NTASKS of the job, else one per node) spread block-wise over
    ``-N`` nodes (default: all of the job's), each with SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID/SLURMD_NODENAME.
    Each task runs in its own process group, and a signal srun receives (or ``scancel --signal``) reaches the
    task's whole process tree, as slurmstepd's process tracking does; ``-K``/``--kill-on-bad-exit`` kills the
    step when a task fails."""
    if "SLURM_JOB_ID" not in os.environ:
        return srun_allocation(argv)
    label, kill_bad, opts, i = False, False, {}, 0
    valued = {"-n": "ntasks", "--ntasks": "ntasks", "-N": "nodes", "--nodes": "nodes", "-c": "cpus",
              "--cpus-per-task": "cpus", "--ntasks-per-node": "ntasks-per-node"}
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        name, eq, value = a.partition("=")
        if a in ("-l", "--label"):
            label = True
        elif a in ("-K", "--kill-on-bad-exit") or name == "--kill-on-bad-exit":
            kill_bad = value != "0"
        elif name in valued or (a[:2] in valued and len(a) > 2 and not a.startswith("--")):
            key = valued.get(name) or valued[a[:2]]
            if not eq and name in valued:
                i += 1
                value = argv[i]
            elif not eq:
                value = a[2:]
            opts[key] = value
        elif (a.startswith("--") and eq) or a in ("-u", "--unbuffered", "--overlap", "--exclusive"):
            pass  # resource/binding options: nothing to emulate on one machine
        elif a[2:] in VALUED or (len(a) == 2 and SHORT.get(a[1]) in VALUED):
            i += 1  # the same with its value apart (--gpus 1, -p gpu)
        else:
            raise SlurmError(f"srun: unrecognized option '{a}'")
        i += 1
    cmd = argv[i:]
    if not cmd:
        raise SlurmError("srun: fatal: No command given to execute.")
    job_hosts = expand_hostlist(os.environ.get("SLURM_JOB_NODELIST", "")) or [socket.gethostname().split(".")[0]]
    nnodes = int(opts.get("nodes", len(job_hosts)))
    if nnodes > len(job_hosts):
        raise SlurmError(f"srun: error: Only allocated {len(job_hosts)} nodes asked for {nnodes}")
    hosts = job_hosts[:nnodes]
    if "ntasks" in opts:
        ntasks = int(opts["ntasks"])
    elif "ntasks-per-node" in opts:
        ntasks = nnodes * int(opts["ntasks-per-node"])
    else:
        ntasks = int(os.environ.get("SLURM_NTASKS", nnodes))
    per_node = -(-ntasks // nnodes)
    state = Path(os.environ.get("SLURM_FAKE_STATE") or state_dir())
    job_id = os.environ["SLURM_JOB_ID"]
    with locked(state):
        f = state / f"steps-{job_id}"
        step = int(f.read_text()) if f.is_file() else 0
        f.write_text(str(step + 1))
    procs = []
    for rank in range(ntasks):
        node = rank // per_node
        env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node),
               "SLURM_NODEID": str(node), "SLURMD_NODENAME": hosts[node], "SLURM_STEP_ID": str(step),
               "SLURM_STEPID": str(step), "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
               "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_NUM_NODES": str(nnodes),
               "SLURM_STEP_NODELIST": ",".join(hosts), "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nnodes})"}
        pipe = subprocess.PIPE if label else None
        try:
            procs.append(subprocess.Popen(cmd, env=env, stdout=pipe, stderr=pipe, start_new_session=True))
        except FileNotFoundError:
            signal_groups([p.pid for p in procs], signal.SIGKILL)
            print(f"slurmstepd: error: execve(): {cmd[0]}: No such file or directory", file=sys.stderr)
            return 2
    (state / "steps").mkdir(exist_ok=True)
    registry = state / "steps" / f"{job_id}.{step}.json"
    registry.write_text(json.dumps({"srun": os.getpid(), "pgids": [p.pid for p in procs]}))

    def forward(signum, _frame):
        signal_groups([p.pid for p in procs if p.poll() is None], signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    threads = []
    if label:
        def pump(stream, out, rank):
            for line in iter(stream.readline, b""):
                out.write(f"{rank}: ".encode() + line)
                out.flush()

        for rank, p in enumerate(procs):
            for stream, out in ((p.stdout, sys.stdout.buffer), (p.stderr, sys.stderr.buffer)):
                t = threading.Thread(target=pump, args=(stream, out, rank), daemon=True)
                t.start()
                threads.append(t)
    try:
        while any(p.poll() is None for p in procs):
            if kill_bad and any(p.poll() not in (None, 0) for p in procs):
                print("srun: error: task exited with a non-zero status: terminating the step (--kill-on-bad-exit)",
                      file=sys.stderr)
                signal_groups([p.pid for p in procs if p.poll() is None], signal.SIGKILL)
            time.sleep(0.05)
    finally:
        registry.unlink(missing_ok=True)
    codes = [p.wait() for p in procs]
    for t in threads:
        t.join()
    bad = [c if c > 0 else 128 - c for c in codes if c != 0]
    if bad:
        print(f"srun: error: {os.environ.get('SLURMD_NODENAME', 'node')}: task(s) "
              f"{[r for r, c in enumerate(codes) if c]}: Exited with exit code {max(bad)}", file=sys.stderr)
    return max(bad) if bad else 0


STEP_ONLY = ("-l", "--label", "-K", "--kill-on-bad-exit", "-u", "--unbuffered", "--overlap")


def srun_allocation(argv: list[str]) -> int:
    """srun outside a job: a job (recorded like any sbatch submission) whose script runs this srun as its
    step; the job's output is relayed while it runs."""
    alloc, i = [], 0  # the allocation's options: those before the command, less the step's own flags
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        takes_value = a[2:] in VALUED or (len(a) == 2 and SHORT.get(a[1]) in VALUED)
        if a.partition("=")[0] not in STEP_ONLY:
            alloc += argv[i:i + 2] if takes_value else [a]
        i += 2 if takes_value else 1
    cmd = argv[i:]
    if not cmd:
        raise SlurmError("srun: fatal: No command given to execute.")
    state = state_dir()
    tag = f"srun-{os.getpid()}-{time.time_ns()}"
    script, out = state / "scripts" / f"{tag}.sh", state / f"{tag}.out"
    script.write_text(f"#!/bin/bash\nexec srun {shlex.join(argv)}\n")
    out.touch()
    done, stdout = threading.Event(), sys.stdout.buffer  # (sys.stdout is stderr while sbatch runs, below)

    def relay() -> None:  # the job's output, as it is written
        with open(out, "rb") as fh:
            while True:
                chunk = fh.read()
                if chunk:
                    stdout.write(chunk)
                    stdout.flush()
                elif done.is_set():
                    return
                else:
                    time.sleep(0.2)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # "srun: job N queued", not the command's output
            return sbatch(["--wait", f"--output={out}", f"--job-name={Path(cmd[0]).name}", *alloc, str(script)])
    finally:
        done.set()
        thread.join()


# ---------------------------------------------------------------- squeue / scancel / scontrol


def _rows(job: dict, expand_array: bool) -> list[dict]:
    """One row per running/finished task; pending array tasks collapsed into one row unless expanded."""
    rows = []
    pending = []
    for idx, t in job["tasks"].items():
        if t["state"] == "PENDING" and job["array"] is not None and not expand_array:
            pending.append(int(idx))
            continue
        state = t["state"]
        if state == "RUNNING" and job["cancelled"]:
            state = "COMPLETING"
        rows.append({"job": job, "idx": idx, "task": t, "state": state})
    if pending:
        spans, start = [], pending[0]
        for a, b in zip(pending, pending[1:] + [None], strict=True):
            if b != a + 1:
                spans.append(f"{start}-{a}" if a != start else f"{start}")
                start = b
        lim = f"%{job['array_limit']}" if job["array_limit"] else ""
        rows.insert(0, {"job": job, "idx": f"[{','.join(spans)}{lim}]", "task": job["tasks"][str(pending[0])],
                        "state": "PENDING"})
    return rows


def _field(code: str, row: dict) -> str:
    job, task, idx, state = row["job"], row["task"], row["idx"], row["state"]
    array = job["array"] is not None
    reason = job["reason"] if state == "PENDING" else "None"
    if state == "PENDING" and reason == "None":
        reason = "Resources" if job["array_limit"] is None else "JobArrayTaskLimit"
    elapsed = int((task["end"] or time.time()) - task["start"]) if task["start"] else 0
    values = {
        "i": f"{job['id']}_{idx}" if array else str(job["id"]), "F": str(job["id"]), "K": idx if array else "N/A",
        "A": str(task["job_id"]), "j": job["name"], "P": job["partition"], "T": state, "t": COMPACT[state],
        "r": reason, "R": reason if state == "PENDING" else socket.gethostname().split(".")[0],
        "u": job["user"], "M": f"{elapsed // 60}:{elapsed % 60:02d}", "D": str(job.get("nodes", 1)),
        "C": str(job["cpus_per_task"]),
        "E": job["dependency"] if state == "PENDING" and job["dependency"] else "(null)",
    }
    return values.get(code, f"%{code}")


def format_row(fmt: str, row: dict) -> str:
    def sub(m):
        right, width, code = m.group(1), m.group(2), m.group(3)
        value = _field(code, row)
        if width:
            value = value[: int(width)]
            value = value.rjust(int(width)) if right else value.ljust(int(width))
        return value

    return re.sub(r"%(\.)?(\d+)?([a-zA-Z])", sub, fmt)


def squeue(argv: list[str]) -> int:
    state = state_dir()
    header, ids, users, names, states, fmt, expand = True, None, None, None, None, None, False
    takes = {"-j": "jobs", "--jobs": "jobs", "-u": "user", "--user": "user", "-n": "name", "--name": "name",
             "-t": "states", "--states": "states", "-o": "format", "--format": "format", "-p": "partition",
             "--partition": "partition"}
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if a in ("-h", "--noheader"):
            header = False
        elif a in ("-r", "--array"):
            expand = True
        elif a == "--me":
            users = [getpass.getuser()]
        elif name in takes and (eq or a.startswith("--") or a in takes):
            if not eq:
                i += 1
                value = argv[i]
            values[takes[name]] = value
        elif a[:2] in takes and len(a) > 2:
            values[takes[a[:2]]] = a[2:]
        else:
            raise SlurmError(f"squeue: unrecognized option '{a}'")
        i += 1
    if "jobs" in values:
        ids = values["jobs"].split(",")
    if "user" in values:
        users = values["user"].split(",")
    if "name" in values:
        names = values["name"].split(",")
    if "states" in values:
        states = [s.upper() for s in values["states"].split(",")]
    fmt = values.get("format")
    fmt = fmt or "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"
    if states is None:
        states = None if ids else list(DEFAULT_STATES)
    elif "ALL" in states:
        states = None
    with locked(state):
        jobs = load_jobs(state)
    wanted_ids = None
    if ids:
        wanted_ids = {x.split("_")[0] for x in ids}
        if len(ids) == 1 and int(next(iter(wanted_ids))) not in jobs:
            print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
            return 1
    lines = []
    if header:
        lines.append(re.sub(r"%(\.)?(\d+)?([a-zA-Z])", lambda m: {"i": "JOBID", "F": "ARRAY_JOB_ID",
                                                                   "j": "NAME", "P": "PARTITION", "T": "STATE",
                                                                   "t": "ST", "u": "USER", "M": "TIME",
                                                                   "D": "NODES", "R": "NODELIST(REASON)",
                                                                   "r": "REASON"}.get(m.group(3), m.group(3)), fmt))
    for job in jobs.values():
        if wanted_ids is not None and str(job["id"]) not in wanted_ids:
            continue
        if users and job["user"] not in users or names and job["name"] not in names:
            continue
        for row in _rows(job, expand):
            if states is None or row["state"] in states or COMPACT[row["state"]] in states:
                lines.append(format_row(fmt, row))
    if lines:
        print("\n".join(lines))
    return 0


def scancel(argv: list[str]) -> int:
    state = state_dir()
    sig, users, names, targets, scope = None, None, None, [], "steps"
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-b", "--batch"):
            scope = "batch"
        elif a in ("-f", "--full"):
            scope = "full"
        elif a in ("-s", "--signal"):
            i += 1
            sig = argv[i]
        elif a.startswith("--signal="):
            sig = a.split("=", 1)[1]
        elif a in ("-u", "--user"):
            i += 1
            users = [argv[i]]
        elif a in ("-n", "--name", "--jobname"):
            i += 1
            names = [argv[i]]
        elif a.startswith("-"):
            raise SlurmError(f"scancel: unrecognized option '{a}'")
        else:
            targets.extend(a.split(","))
        i += 1
    signum = None
    if sig is not None:
        signum = int(sig) if sig.isdigit() else signal.Signals["SIG" + sig.upper().removeprefix("SIG")]
    with locked(state):
        jobs = load_jobs(state)
        chosen: list[tuple[dict, str | None]] = []
        for t in targets:
            base, _, idx = t.partition("_")
            job = jobs.get(int(base))
            if job is None:
                print(f"scancel: error: Kill job error on job id {t}: Invalid job id specified", file=sys.stderr)
                continue
            chosen.append((job, idx or None))
        if not targets:
            chosen = [(j, None) for j in jobs.values() if (not users or j["user"] in users)
                      and (not names or j["name"] in names)]
        now = time.time()
        for job, idx in chosen:
            tasks = [job["tasks"][idx]] if idx is not None else list(job["tasks"].values())
            for task in tasks:
                if task["state"] == "RUNNING" and task["pid"] and signum is not None:
                    # a signal goes to the job steps (every task's processes), -b to the batch shell alone
                    # (what --signal=B:SIG@T sends), -f to both
                    if scope in ("batch", "full"):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(task["pid"], signum)
                    if scope in ("steps", "full"):
                        signal_groups(step_pgids(state, task["job_id"]), signum)
                elif task["state"] == "RUNNING" and task["pid"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(task["pid"], signal.SIGTERM)
                    signal_groups(step_pgids(state, task["job_id"]), signal.SIGTERM)
                    task["cancelled"] = True
                    task["kill_sent"] = now
                elif task["state"] == "PENDING" and signum is None:
                    task.update(state="CANCELLED", end=now)
            if signum is None and idx is None:
                job["cancelled"] = True
            save_job(state, job)
    return 0


def scontrol(argv: list[str]) -> int:
    state = state_dir()
    if argv[:2] == ["show", "hostnames"]:
        spec = argv[2] if len(argv) > 2 else os.environ.get("SLURM_JOB_NODELIST", "")
        print("\n".join(expand_hostlist(spec)))
        return 0
    if argv[:2] == ["show", "job"] and len(argv) > 2:
        with locked(state):
            job = load_jobs(state).get(int(argv[2].split("_")[0]))
        if job is None:
            raise SlurmError("slurm_load_jobs error: Invalid job id specified")
        print(f"JobId={job['id']} JobName={job['name']}\n   UserId={job['user']}({job['uid']}) "
              f"JobState={job_state(job)} Reason={job['reason']} Dependency={job['dependency'] or '(null)'}\n"
              f"   Partition={job['partition']} NumCPUs={job['cpus_per_task']}\n   Command={job['script']}\n"
              f"   WorkDir={job['chdir']}\n   StdOut={job['output']}")
        return 0
    if argv[:1] == ["requeue"] and len(argv) > 1:
        with locked(state):
            jobs = load_jobs(state)
            for target in argv[1].split(","):
                hit = False
                for job in jobs.values():
                    for task in job["tasks"].values():
                        if target in (str(task["job_id"]), str(job["id"])) and task["state"] == "RUNNING":
                            task["requeue"] = True
                            hit = True
                    save_job(state, job)
                if not hit:
                    raise SlurmError(f"Requeue of job {target} failed: Invalid job id specified")
        return 0
    raise SlurmError(f"scontrol: fake SLURM does not emulate `scontrol {' '.join(argv[:2])}`")


COMMANDS = {"sbatch": sbatch, "srun": srun, "squeue": squeue, "scancel": scancel, "scontrol": scontrol}


def main(prog: str, argv: list[str]) -> int:
    try:
        return COMMANDS[prog](argv)
    except SlurmError as err:
        print(err, file=sys.stderr)
        return 1
    except BrokenPipeError:  # `scontrol show hostnames | head -n 1`: the reader stopped early, as intended
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["runner"]:
        os.environ["FAKE_SLURM_STATE"] = sys.argv[2]
        sys.exit(Runner(state_dir()).main())
    sys.exit(main(sys.argv[1], sys.argv[2:]))
