"""Sandbox bootstrap, run as ``python -I _sandbox_boot.py <config json>`` by reward_models.sandbox.

Stdlib only (it runs before any isolation exists). Four processes:

- **boot** (host namespaces) reads the inputs and the per-run result key (from a pipe it then
  closes), forks the *setup* process and writes its uid/gid maps from outside (as host root it maps
  an unprivileged uid, ``nobody``, next to root);
- **setup** enters new user + pid + network + mount namespaces, makes every mount read-only and
  mounts a small tmpfs as the working directory, then forks the *runner*;
- **runner** is pid 1 (init) of the new pid namespace in its own session: it mounts a fresh
  ``/proc`` (only its own namespace visible) and forks the *program* process, whose wait status it
  passes back to setup (init ignores the signals, e.g. SIGXCPU, that must end the program);
- **program** drops every capability and switches to the unprivileged uid, sets rlimits, installs a
  seccomp filter (no namespace / mount / ptrace / keyring / bpf syscalls; no process creation when
  ``max_processes <= 1``; no x32 syscalls), reports which of those held, and runs the program.

Each step the OS refuses is reported as not held, never faked.

Report lines (``I``, ``T``, ``E``) carry an HMAC with the per-run key, so lines the program writes
to the inherited report descriptor are ignored by the reader.
"""
import ctypes
import hashlib
import hmac
import json
import os
import platform
import resource
import signal
import struct
import sys

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID = 0x10000000, 0x40000000, 0x00020000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 0x4000, 1 << 18
NOBODY = 65534
# syscall numbers per machine; "deny" are refused with EPERM for every sandboxed program
SYSCALLS = {
    "x86_64": {"audit": 0xC000003E, "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "clone": 56,
               "clone3": 435, "fork": [57, 58], "capset": 126,
               "deny": [272, 308, 165, 166, 155, 161, 101, 428, 429, 430, 431, 432, 433, 442, 321, 323, 248, 249,
                        250, 298, 310, 311]},
    "aarch64": {"audit": 0xC00000B7, "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "clone": 220,
                "clone3": 435, "fork": [], "capset": 91,
                "deny": [97, 268, 40, 39, 41, 51, 117, 428, 429, 430, 431, 432, 433, 442, 280, 282, 217, 218,
                         219, 241, 270, 271]},
}
ARCH = SYSCALLS.get(platform.machine())
STATE = {"fd": 3, "key": b""}


def report(line):
    """Write one signed report line: ``<line> <hmac>``."""
    sig = hmac.new(STATE["key"], line.encode(), hashlib.sha256).hexdigest()[:32]
    os.write(STATE["fd"], f"{line} {sig}\n".encode())


def write_maps(pid, uid, gid):
    """From the host side: map root (and, as host root, ``nobody``) into the child's user namespace.
    Returns b"0" (failed), b"1" (root only) or b"2" (root and nobody)."""
    extra = uid == 0 and gid == 0
    maps = [("uid_map", f"0 {uid} 1" + (f"\n{NOBODY} {NOBODY} 1" if extra else "")),
            ("gid_map", f"0 {gid} 1" + (f"\n{NOBODY} {NOBODY} 1" if extra else ""))]
    try:
        if not extra:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
        for name, text in maps:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
    except OSError:
        return b"0"
    return b"2" if extra else b"1"


def readonly_root(libc, workdir):
    """Every mount read-only (recursive mount_setattr) and a 16 MiB tmpfs as the working directory."""
    if ARCH is None or libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    attr = struct.pack("QQQQ", 1, 0, 0, 0)  # struct mount_attr{attr_set=MOUNT_ATTR_RDONLY}
    buf = ctypes.create_string_buffer(attr, len(attr))
    if libc.syscall(ARCH["mount_setattr"], -100, b"/", 0x8000, buf, len(attr)) != 0:  # AT_FDCWD, AT_RECURSIVE
        return False
    flags = MS_NOSUID | MS_NODEV
    return libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", flags, b"size=16m,mode=0777") == 0


def _closed_ancestor(path):
    """The topmost directory above ``path`` that other users cannot enter (mode without o+x), or None."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts)):
        top = os.sep + os.sep.join(parts[:i])
        if not os.stat(top).st_mode & 0o001:
            return top
    return None


def expose_interpreter(libc, paths):
    """Cover every directory others cannot enter (e.g. ``/root``) above the interpreter's import
    paths with an empty tmpfs and bind those import paths back into it: the unprivileged uid can
    import the standard library and sees nothing else of that directory."""
    paths = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})
    paths = [p for p in paths if not any(p.startswith(q + os.sep) for q in paths)]
    covers = {}
    for path in paths:
        top = _closed_ancestor(path)
        if top is not None:
            covers.setdefault(top, []).append(path)
    if not covers:
        return True
    if ARCH is None:  # no open_tree/move_mount numbers for this machine: cannot bind the paths back
        return False
    for top, inner in covers.items():
        # open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE | O_CLOEXEC): detached copies
        trees = [(p, libc.syscall(ARCH["open_tree"], -100, p.encode(), 1 | 0x8000 | 0x80000)) for p in inner]
        if any(fd < 0 for _, fd in trees) or libc.mount(b"tmpfs", top.encode(), b"tmpfs", 0, b"size=1m,mode=0755") != 0:
            return False
        for path, fd in trees:
            os.makedirs(path, mode=0o755, exist_ok=True)
            if libc.syscall(ARCH["move_mount"], fd, b"", -100, path.encode(), 4) != 0:  # MOVE_MOUNT_F_EMPTY_PATH
                return False
            os.close(fd)
    return True


def set_limits(cfg):
    cpu = max(1, int(-(-cfg["cpu_time"] // 1)))
    limits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, cfg["memory_mb"] << 20, cfg["memory_mb"] << 20),
        (resource.RLIMIT_FSIZE, cfg["max_output_bytes"], cfg["max_output_bytes"]),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 256, 256),
    ]
    if cfg["max_processes"] > 1:  # counts the uid's processes; in our own user namespace only its own
        nproc = cfg["max_processes"] + cfg["nproc_extra"]
        limits.append((resource.RLIMIT_NPROC, nproc, nproc))
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass


def drop_privileges(libc, mapped_nobody):
    """Empty the capability bounding set, switch to ``nobody`` when mapped, clear all capabilities.
    Returns True iff the process ends with no effective capability and a non-root uid or no caps."""
    ul = ctypes.c_ulong
    for cap in range(64):
        libc.prctl(24, ul(cap), ul(0), ul(0), ul(0))  # PR_CAPBSET_DROP (fails past the last cap)
    if mapped_nobody:
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        except OSError:
            return False
    if ARCH is not None:
        header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
        data = ctypes.create_string_buffer(24)
        libc.syscall(ARCH["capset"], header, data)
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return int(status.get("CapEff", "1").strip(), 16) == 0 and int(status.get("CapBnd", "1").strip(), 16) == 0


def seccomp(libc, no_fork):
    """Install the filter: x32 calls and SYSCALLS[...]["deny"] get EPERM; with ``no_fork`` also fork,
    vfork and clone without CLONE_THREAD (EPERM) and clone3 (ENOSYS, so libc falls back to clone)."""
    if ARCH is None:
        return False
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, ARCH["audit"]), (ret, 0, 0, eperm), (ld, 0, 0, 0),
            (jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    for n in ARCH["deny"] + (ARCH["fork"] if no_fork else []):
        prog += [(jeq, 0, 1, n), (ret, 0, 0, eperm)]
    if no_fork:
        prog += [(jeq, 0, 1, ARCH["clone3"]), (ret, 0, 0, enosys), (jeq, 1, 0, ARCH["clone"]), (ret, 0, 0, allow),
                 (ld, 0, 0, 16), (jset, 1, 0, 0x10000), (ret, 0, 0, eperm)]
    prog.append((ret, 0, 0, allow))
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    filt = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(filt))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    ul = ctypes.c_ulong
    if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, ul(2), ul(ctypes.addressof(fbuf)), ul(0), ul(0)) == 0  # PR_SET_SECCOMP, FILTER


def run_tests(program, tests):
    """Exec the program as module ``solution``; then each test in its namespace; report ``T i ok``."""
    namespace = {"__name__": "solution"}
    try:
        exec(compile(program, "solution.py", "exec"), namespace)
    except BaseException as err:  # noqa: BLE001 - a failing solution fails every test
        report(f"E {type(err).__name__}")
        return
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{i}.py", "exec"), namespace)
            ok = 1
        except BaseException:  # noqa: BLE001 - AssertionError, SystemExit, anything: a failed test
            ok = 0
        report(f"T {i} {ok}")


def die_with_parent(libc, parent):
    libc.prctl(1, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if os.getppid() != parent:  # PR_SET_PDEATHSIG: the parent already died
        os._exit(1)


def runner(libc, cfg, program, tests, held, status_w):
    """pid 1 of the new pid namespace (its init, immune to signals from inside): fresh /proc, then
    fork the program and hand its wait status to the setup process through ``status_w``."""
    os.setsid()
    parent = held.pop("parent")
    proc = held["user_namespace"] and libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                                                 None) == 0
    held["pid_namespace"] = bool(proc) and os.getpid() == 1
    die_with_parent(libc, 0 if os.getpid() == 1 else parent)
    pid = os.fork()
    if pid == 0:
        os.close(status_w)
        run_child(execute, libc, cfg, program, tests, held)
    os.write(status_w, str(os.waitpid(pid, 0)[1]).encode())


def execute(libc, cfg, program, tests, held):
    """The program's process: no privileges, limits, seccomp, report what held, run the program."""
    os.chdir(cfg["workdir"])  # before the uid change: the path above it is private to the host user
    # the init of the namespace counts too when it shares the uid; outside a namespace every host task does
    cfg["nproc_extra"] = (int(not held["mapped_nobody"]) if held["user_namespace"] else cfg["nproc_base"])
    no_caps = drop_privileges(libc, held.pop("mapped_nobody"))
    held["unprivileged"] = no_caps and (os.getuid() != 0 or (held["user_namespace"] and cfg["host_uid"] != 0))
    die_with_parent(libc, os.getppid())  # the namespace's init; set after the uid change, which clears it
    set_limits(cfg)
    held["syscall_filter"] = seccomp(libc, cfg["max_processes"] <= 1)
    held["no_fork"] = held["syscall_filter"] and cfg["max_processes"] <= 1
    report("I " + json.dumps(held, separators=(",", ":"), sort_keys=True))
    if tests is None:
        sys.argv = ["solution.py"]
        exec(compile(program, "solution.py", "exec"), {"__name__": "__main__"})
    else:
        run_tests(program, tests)


def run_child(fn, *args):
    """Run ``fn`` in a forked child and leave with the exit code Python itself would use."""
    code = 0
    try:
        fn(*args)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else int(err.code is not None)
        if err.code is not None and not isinstance(err.code, int):
            print(err.code, file=sys.stderr)
    except BaseException as err:  # noqa: BLE001 - report like the interpreter would
        sys.excepthook(type(err), err, err.__traceback__)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def mirror(status):
    """End this process the way a child with wait status ``status`` ended (exit code or signal)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def setup(libc, cfg, program, tests, sync_r, go_w):
    """New namespaces; wait for the host to write the id maps; read-only mounts; fork the runner."""
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | (0 if cfg["network"] else CLONE_NEWNET)
    unshared = libc.unshare(flags) == 0
    os.write(go_w, b"1" if unshared else b"0")
    mapped = os.read(sync_r, 1)
    held = {"user_namespace": unshared and mapped in (b"1", b"2"), "network": unshared and not cfg["network"],
            "mapped_nobody": mapped == b"2", "parent": os.getpid()}
    if held["mapped_nobody"] and not expose_interpreter(libc, sys.path[1:]):
        held["mapped_nobody"] = False  # stay root in the namespace rather than lose the standard library
    held["filesystem"] = held["user_namespace"] and readonly_root(libc, cfg["workdir"])
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(status_r)
        run_child(runner, libc, cfg, program, tests, held, status_w)
    os.close(status_w)
    status = os.waitpid(pid, 0)[1]
    program_status = os.read(status_r, 32)  # the program's status, as its init saw it
    mirror(int(program_status) if program_status else status)


def main():
    cfg = json.loads(sys.argv[1])
    STATE["fd"], cfg["host_uid"] = cfg["report_fd"], os.getuid()
    STATE["key"] = os.read(cfg["key_fd"], 64)
    os.close(cfg["key_fd"])
    with open(cfg["program_path"]) as f:
        program = f.read()
    with open(cfg["tests_path"]) as f:
        tests = json.load(f)
    libc = ctypes.CDLL(None, use_errno=True)
    (to_setup_r, to_setup_w), (to_boot_r, to_boot_w) = os.pipe(), os.pipe()
    boot = os.getpid()
    pid = os.fork()
    if pid == 0:
        die_with_parent(libc, boot)
        run_child(setup, libc, cfg, program, tests, to_setup_r, to_boot_w)
    unshared = os.read(to_boot_r, 1) == b"1"
    os.write(to_setup_w, write_maps(pid, os.getuid(), os.getgid()) if unshared else b"0")
    mirror(os.waitpid(pid, 0)[1])


if __name__ == "__main__":
    main()
