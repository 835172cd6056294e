"""Running learner code: in its own child process, with caps, and as an unprivileged user under root.

No process that decides a verdict runs learner code. `run_learner_code` starts a fresh interpreter
(`python -I`, the child entry `ftcourse.grading.child`), sends it a request (the solution cells' sources,
the names to define, the operation and its inputs) and reads back one JSON result: data, never a verdict.

Caps, per child: wall time, address space (memory), size of everything it writes (result and log
included), number of processes of its user. When the grader runs as root (a grading server, CI), the
child runs as the unprivileged user `ftcourse-learner` (`$FTCOURSE_LEARNER_USER`) in a new session, with
an empty private working folder and a minimal environment: no secret, no instructor path. Afterwards every
process of that user is killed (a daemon cannot outlive its submission) and every file it left in the
shared temporary folders is removed, so the next submission starts as if alone. As a normal user the same
caps apply but the child runs as that user: see autograder/README.md for what that does not defend.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEARNER_USER_ENV = "FTCOURSE_LEARNER_USER"
DEFAULT_LEARNER_USER = "ftcourse-learner"
SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")
# The child's first lines: lower its own limits (irreversibly), then import the child entry from the
# grader's install. Limits are set here rather than in a preexec_fn, which is unsafe in a threaded parent.
BOOTSTRAP = ("import json, os, resource, sys\n"
             "os.nice(19)\n"  # learner code yields the CPU to the grader, which may be training beside it
             "for name, value in json.loads(sys.argv[3]).items():\n"
             "    resource.setrlimit(getattr(resource, name), (value, value))\n"
             "if sys.argv[1]: sys.path.insert(0, sys.argv[1])\n"
             "from ftcourse.grading.child import main\n"
             "main(int(sys.argv[2]))\n")


class IsolationError(RuntimeError):
    """The sandbox cannot be set up as configured (a missing user, a path the learner user cannot reach)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one child may use. Configure with $FTCOURSE_CHILD_SECONDS and $FTCOURSE_CHILD_MEMORY_GB."""

    seconds: float = 300.0  # wall time of one child (a solution cell and the grader's call of it)
    memory_gb: float = 6.0  # address space (RLIMIT_AS); torch alone maps about 1.5 GB
    output_mb: int = 32  # largest file the child may write (its result and log included; RLIMIT_FSIZE)
    processes: int = 256  # processes and threads of the learner user (RLIMIT_NPROC)

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(seconds=float(os.environ.get("FTCOURSE_CHILD_SECONDS", cls.seconds)),
                   memory_gb=float(os.environ.get("FTCOURSE_CHILD_MEMORY_GB", cls.memory_gb)))


@dataclasses.dataclass(frozen=True)
class Identity:
    """The unprivileged user learner code runs as."""

    name: str
    uid: int
    gid: int


def learner_identity(create: bool = False) -> Identity | None:
    """The learner user when this process is root (created on request), else None (no privilege to drop)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(LEARNER_USER_ENV, DEFAULT_LEARNER_USER)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise IsolationError(f"The learner user {name!r} does not exist; `make grade` creates it, or run: "
                                 f"useradd --system --no-create-home --shell /usr/sbin/nologin {name}") from None
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise IsolationError(f"The learner user {name!r} is root; choose an unprivileged user.")
    return Identity(name, entry.pw_uid, entry.pw_gid)


@dataclasses.dataclass
class ChildResult:
    """What came back from a child: its data, or why there is none."""

    ok: bool
    data: object
    error: str  # for the learner's feedback: never secret, never the instructor's paths
    kind: str  # "ok" | "learner_error" | "timeout" | "killed" | "no_result" | "bad_result"
    seconds: float
    log_tail: str  # the child's stdout and stderr, last lines: for the instructor's log, not for feedback


def _rlimits(limits: Limits, identity: Identity | None) -> str:
    """The resource limits the child sets on itself first thing (soft = hard: it cannot raise them again)."""
    values = {"RLIMIT_AS": int(limits.memory_gb * 2**30), "RLIMIT_CPU": int(limits.seconds) + 5,
              "RLIMIT_FSIZE": limits.output_mb * 2**20, "RLIMIT_CORE": 0}
    if identity is not None:  # counted per user: only meaningful for the dedicated learner user
        values["RLIMIT_NPROC"] = limits.processes
    return json.dumps(values)


def _environment(workdir: Path, identity: Identity | None, cache: str | None) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(workdir / "hf"),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": str(workdir),
           "PYTHONWARNINGS": "ignore"}
    if identity is not None:
        env["USER"] = env["LOGNAME"] = identity.name
    if cache:
        env["FTCOURSE_CACHE"] = cache
    if "OMP_NUM_THREADS" in os.environ:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    from ..presets import CPU_BF16_ENV, cpu_bf16_autocast

    env[CPU_BF16_ENV] = "1" if cpu_bf16_autocast() else "0"  # the child's CPU preset is the grader's, not re-measured
    return env


def run_learner_code(request: dict, *, limits: Limits | None = None, site: str | None = None,
                     cache: str | None = None, secret_inputs: bool = False,
                     python: str | None = None) -> ChildResult:
    """Run `request` in a fresh child (see `ftcourse.grading.child`) and return the data it sends back.

    `site`: a folder to import `ftcourse` from (the grader's non-editable install); `cache`: the model cache
    the child may read; `secret_inputs`: the inputs derive from the secret, so a learner exception's text
    (which could carry them) is replaced by its type and line.
    """
    limits = limits or Limits.from_env()
    identity = learner_identity(create=True)
    if identity is not None:
        sweep_user(identity)  # nothing of an earlier submission may still run beside this one
    private = Path(tempfile.mkdtemp(prefix="ftcourse-grader-"))  # the parent's side: request, result, log
    workdir = Path(tempfile.mkdtemp(prefix="ftcourse-learner-"))
    try:
        if identity is not None:
            os.chown(workdir, identity.uid, identity.gid)
        os.chmod(workdir, 0o700)
        (private / "request.json").write_text(json.dumps(request))
        start = time.perf_counter()
        with open(private / "request.json", "rb") as stdin, open(private / "result.json", "wb") as result, \
                open(private / "log.txt", "wb") as log:
            cmd = [python or sys.executable, "-I", "-c", BOOTSTRAP, site or "", str(result.fileno()),
                   _rlimits(limits, identity)]
            try:
                proc = subprocess.Popen(cmd, stdin=stdin, stdout=log, stderr=log, cwd=workdir,
                                        env=_environment(workdir, identity, cache), pass_fds=(result.fileno(),),
                                        umask=0o077, start_new_session=True,
                                        user=identity.uid if identity else None,
                                        group=identity.gid if identity else None,
                                        extra_groups=[] if identity else None)
            except OSError as error:
                raise IsolationError(f"Could not start the learner's process ({error}); see autograder/README.md.") from None
            try:
                returncode = proc.wait(timeout=limits.seconds)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                returncode = None
            _kill_group(proc)
        seconds = time.perf_counter() - start
        if identity is not None:
            sweep_user(identity)
        log_tail = _tail(private / "log.txt")
        if timed_out:
            return ChildResult(False, None, f"Your code ran past the time cap of {limits.seconds:.0f} s and was stopped "
                               "(an endless loop, a long sleep, or far too much work).", "timeout", seconds, log_tail)
        return _read_result(private / "result.json", returncode, limits, secret_inputs, seconds, log_tail)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole session (it started one), then reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, limit: int = 4000) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - limit))
        return f.read().decode("utf-8", "replace")


def _read_result(path: Path, returncode, limits: Limits, secret_inputs: bool, seconds: float, log_tail: str) -> ChildResult:
    return _parse_result(path.read_bytes(), returncode, limits, secret_inputs, seconds, log_tail)


def _parse_result(text: bytes, returncode, limits: Limits, secret_inputs: bool, seconds: float,
                  log_tail: str) -> ChildResult:
    if returncode is not None and returncode < 0:  # killed by a signal: whatever it wrote is not an answer
        name = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else str(-returncode)
        return ChildResult(False, None, f"Your code's process was killed ({name}): memory over the cap of "
                           f"{limits.memory_gb:g} GB, a file over {limits.output_mb} MB, CPU time, or a crash.",
                           "killed", seconds, log_tail)
    if not text:
        return ChildResult(False, None, f"Your code ended the process (exit code {returncode}) before the grader's call "
                           "returned: remove exit() / os._exit() / sys.exit() from the cell.", "no_result", seconds, log_tail)
    if len(text) > limits.output_mb * 2**20:
        return ChildResult(False, None, "The result of your code is too large.", "bad_result", seconds, log_tail)
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("ok"), bool):
            raise ValueError("not a result object")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ChildResult(False, None, "Your code's process returned something that is not the grader's result "
                           "(it wrote to the grader's channel).", "bad_result", seconds, log_tail)
    if raw["ok"]:
        return ChildResult(True, raw.get("data"), "", "ok", seconds, log_tail)
    return ChildResult(False, None, _learner_error(raw.get("error"), secret_inputs), "learner_error", seconds, log_tail)


class LearnerSession:
    """One child that runs the solution cells once, then answers a sequence of calls: notebook 08's reward
    functions, called at every GRPO step while the grader trains in its own process.

    The same child as `run_learner_code` (user, caps, environment, cleanup): the request goes in as one JSON line
    on its stdin, each call as another line, and each answer comes back as one JSON line on the result pipe. The
    time spent waiting for the child, summed over the whole session (writing requests, reading answers), is capped
    at `limits.seconds`, and its CPU time by RLIMIT_CPU; it runs at the lowest priority (nice 19) beside the
    grader's training. An answer the grader did not ask for yet, or an ended result pipe, ends the session. Use as
    a context manager: `started` is the cells' ChildResult (not ok: the cells failed, and `call` returns that again).
    """

    def __init__(self, request: dict, *, limits: Limits | None = None, site: str | None = None,
                 cache: str | None = None, secret_inputs: bool = False, python: str | None = None):
        self.request = dict(request, op="session", inputs={})
        self.limits = limits or Limits.from_env()
        self.site, self.cache, self.secret_inputs, self.python = site, cache, secret_inputs, python
        self.proc = None
        self.started: ChildResult | None = None

    def __enter__(self) -> "LearnerSession":
        self.identity = learner_identity(create=True)
        if self.identity is not None:
            sweep_user(self.identity)  # nothing of an earlier submission may still run beside this one
        self.budget = self.limits.seconds  # seconds left to wait for the child, over the whole session
        self.private = Path(tempfile.mkdtemp(prefix="ftcourse-grader-"))
        self.workdir = Path(tempfile.mkdtemp(prefix="ftcourse-learner-"))
        if self.identity is not None:
            os.chown(self.workdir, self.identity.uid, self.identity.gid)
        os.chmod(self.workdir, 0o700)
        self.log = open(self.private / "log.txt", "wb")
        self.reader, writer = os.pipe()
        cmd = [self.python or sys.executable, "-I", "-c", BOOTSTRAP, self.site or "", str(writer),
               _rlimits(self.limits, self.identity)]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, cwd=self.workdir,
                                         env=_environment(self.workdir, self.identity, self.cache), pass_fds=(writer,),
                                         umask=0o077, start_new_session=True,
                                         user=self.identity.uid if self.identity else None,
                                         group=self.identity.gid if self.identity else None,
                                         extra_groups=[] if self.identity else None)
        except OSError as error:
            self.__exit__(None, None, None)
            raise IsolationError(f"Could not start the learner's process ({error}); see autograder/README.md.") from None
        finally:
            os.close(writer)
        self.buffer = b""
        self.started = self._exchange(self.request)
        return self

    def call(self, op: str, inputs: dict) -> ChildResult:
        """The child's answer to `op` on `inputs` (its data, or why there is none)."""
        if self.started is None or not self.started.ok:
            return self.started
        return self._exchange({"op": op, "inputs": inputs})

    def _exchange(self, message: dict) -> ChildResult:
        import select

        start = time.perf_counter()
        deadline = start + max(self.budget, 0)
        try:
            if self.buffer or select.select([self.reader], [], [], 0)[0]:  # an answer before the question
                return self._end("bad_result", "Your code's process wrote to the grader's channel before it was asked "
                                 "(an answer the grader did not request).", start)
            if not self._send(json.dumps(message).encode() + b"\n", deadline):
                return self._end("timeout", self._late(), start)
            cap, pieces, size = self.limits.output_mb * 2**20, [], 0
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or not select.select([self.reader], [], [], remaining)[0]:
                    return self._end("timeout", self._late(), start)
                chunk = os.read(self.reader, 1 << 16)
                if not chunk:  # the result pipe ended: whatever was written before is not an answer to this call
                    try:
                        returncode = self.proc.wait(timeout=max(0.1, min(5.0, deadline - time.perf_counter())))
                    except subprocess.TimeoutExpired:  # it closed the channel and lives on: stop it
                        returncode = None
                    _kill_group(self.proc)
                    self.started = _parse_result(b"", returncode, self.limits, self.secret_inputs,
                                                 time.perf_counter() - start, self._tail())
                    return self.started
                pieces.append(chunk)
                size += len(chunk)
                if size > cap:
                    return self._end("bad_result", "The result of your code is too large.", start)
                if b"\n" in chunk:
                    break
        finally:
            self.budget -= time.perf_counter() - start
        line, _, self.buffer = b"".join(pieces).partition(b"\n")
        return _parse_result(line, None, self.limits, self.secret_inputs, time.perf_counter() - start, self._tail())

    def _send(self, data: bytes, deadline: float) -> bool:
        """Write a request within the deadline (a child that does not read cannot block the grader); False: late.
        A child that is gone is not an error here: reading its answer says why."""
        import select

        fd = self.proc.stdin.fileno()
        os.set_blocking(fd, False)
        while data:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                return False
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                continue
            except OSError:  # BrokenPipeError: the child closed its end
                return True
        return True

    def _late(self) -> str:
        return (f"Your code ran past the time cap of {self.limits.seconds:.0f} s (all of this submission's calls "
                "together) and was stopped: an endless loop, a long sleep, or far too much work.")

    def _end(self, kind: str, error: str, start: float) -> ChildResult:
        """Stop the child: every later call gets this result."""
        _kill_group(self.proc)
        self.started = ChildResult(False, None, error, kind, time.perf_counter() - start, self._tail())
        return self.started

    def _tail(self) -> str:
        self.log.flush()
        return _tail(self.private / "log.txt")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            _kill_group(self.proc)
        if getattr(self, "reader", None) is not None:
            os.close(self.reader)
            self.reader = None
        if self.identity is not None:
            sweep_user(self.identity)
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.private, ignore_errors=True)


def _learner_error(error, secret_inputs: bool) -> str:
    """The learner's exception as feedback may show it: type, cell and line, and (for public inputs) its text."""
    if not isinstance(error, dict):
        return "Your code raised an error."
    kind = str(error.get("type", "Exception"))[:80]
    where = str(error.get("where", ""))[:120]
    place = f" ({where})" if where else ""
    if secret_inputs:
        return (f"Your code raised {kind}{place} on the grader's data. The grader does not show its message, which "
                "could quote hidden data: run the visible self-check, which calls the same code on public data.")
    message = str(error.get("message", ""))[:1500]
    return f"Your code raised {kind}{place}" + (f": {message}" if message else ".")


# ---------------------------------------------------------------- cleaning up after the learner user

def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if uid in {int(x) for x in line.split()[1:]}:
                            pids.append(int(entry))
                        break
        except OSError:
            continue
    return pids


def sweep_user(identity: Identity) -> None:
    """Kill every process of the learner user and remove what it left in the shared temporary folders."""
    for _ in range(50):  # a process may fork while we kill; repeat until none is left
        pids = _processes_of(identity.uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
    for top in SHARED_TEMP:
        _remove_owned(Path(top), identity.uid)


def _remove_owned(top: Path, uid: int) -> None:
    """Remove every file and folder under `top` owned by `uid`, never following a symbolic link."""
    if not top.is_dir():
        return
    owned = _owned_by(top, uid)
    for path in _walk_owned(top, uid) if owned is None else owned:  # None: no usable find(1)
        try:
            info = path.lstat()
        except OSError:
            continue
        if info.st_uid != uid:
            continue
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except OSError:
                pass


def _owned_by(top: Path, uid: int) -> list[Path] | None:
    """The top-most entries under `top` owned by `uid`, listed by find(1) (it never follows a symbolic link, and is
    several times faster than a walk in Python over a large /tmp); None when find cannot be run."""
    try:
        done = subprocess.run(["find", str(top), "-mindepth", "1", "-uid", str(uid), "-prune", "-print0"],
                              capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 and not done.stdout and b"No such file" not in done.stderr and b"Permission" not in done.stderr:
        return None
    return [Path(os.fsdecode(entry)) for entry in done.stdout.split(b"\0") if entry]


def _walk_owned(top: Path, uid: int) -> list[Path]:
    """What `_owned_by` lists, by a walk in Python (slower over a large /tmp): an owned folder is not entered."""
    owned = []
    for dirpath, dirnames, filenames in os.walk(top, topdown=True, followlinks=False):
        for name in list(dirnames) + filenames:
            try:
                if (Path(dirpath) / name).lstat().st_uid == uid:
                    owned.append(Path(dirpath) / name)
                    if name in dirnames:
                        dirnames.remove(name)
            except OSError:
                continue
    return owned


# ---------------------------------------------------------------- can the learner user run Python at all?

def blocked_paths(paths: list[Path]) -> list[Path]:
    """Folders on the way to `paths` that other users cannot enter (no o+x): the learner user cannot pass them."""
    blocked = []
    for path in paths:
        for folder in [*reversed(Path(path).resolve().parents), Path(path).resolve()]:
            if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH and folder not in blocked:
                blocked.append(folder)
    return blocked


def runtime_paths(python: str | None = None, site: str | None = None, cache: str | None = None) -> list[Path]:
    """What the learner's interpreter must reach: the interpreter, its standard library, the packages."""
    import sysconfig

    paths = [Path(python or sys.executable).resolve(), Path(sysconfig.get_paths()["stdlib"]),
             Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])]
    return paths + [Path(p) for p in (site, cache) if p]
