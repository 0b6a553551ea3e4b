"""Sandbox bootstrap, run as ``python -I _sandbox_boot.py <config json>`` by reward_models.sandbox.

Stdlib only (it runs before any isolation exists). Four processes:

- **boot** (host namespaces) reads the inputs, forks the *setup* process and writes its uid/gid
  maps from outside (as host root it maps an unprivileged uid, ``nobody``, next to root);
- **setup** enters new user + pid + network + mount (+ IPC, UTS) namespaces and builds the jail: an empty tmpfs
  with only the interpreter's own paths (``/usr``, ``sys.path``, a few ``/dev`` nodes) bound back
  read-only; then forks the *runner*;
- **runner** is pid 1 (init) of the new pid namespace: it mounts a fresh ``/proc`` in the jail,
  pivots into it (the host's tree is detached), mounts a 16 MiB tmpfs as ``/sandbox`` (the cwd),
  forks the *program* process, checks from ``/proc`` that it holds no capability and is under
  seccomp, waits for it (killing the namespace at the wall-clock limit) and writes the
  **isolation report** (features held, wait status, timed out) on a pipe the program never holds;
- **program** closes every descriptor but stdio and its results file, drops every capability,
  switches to the unprivileged uid, sets rlimits (tasks always capped), installs a seccomp filter,
  and runs the program: as ``__main__`` on stdin, or loaded as module ``solution`` followed by
  each *call* expression, whose value goes to the results file as strict JSON of plain values.

With a ``proxy`` job the program process instead runs one end of a proxy channel
(reward_models/_proxy.py: the program's server, or the judge running the tests unchanged).
The expected values never enter the program's sandbox: the host or the judge's sandbox compares.
Each step the OS refuses is reported as not held, never faked.
"""
import ctypes
import json
import os
import platform
import resource
import signal
import struct
import sys
import time

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID = 0x10000000, 0x40000000, 0x00020000, 0x20000000
CLONE_NEWIPC, CLONE_NEWUTS = 0x08000000, 0x04000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 0x4000, 1 << 18
ATTR_RDONLY, ATTR_NOSUID, ATTR_NODEV = 1, 2, 4
NOBODY, AF_UNIX, JAIL_CWD = 65534, 1, "/sandbox"
DEV_NODES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
# syscall numbers per machine; "deny" are refused with EPERM for every sandboxed program: namespaces,
# mounts, pivot_root/chroot, ptrace, bpf, keys, perf, userfaultfd, process_vm_*, io_uring_*,
# name_to_handle_at/open_by_handle_at, mknod*
SYSCALLS = {
    "x86_64": {"audit": 0xC000003E, "mount_setattr": 442, "pivot_root": 155, "clone": 56, "clone3": 435,
               "fork": [57, 58], "capset": 126, "socket": 41,
               "deny": [272, 308, 165, 166, 155, 161, 101, 428, 429, 430, 431, 432, 433, 442, 321, 323, 248, 249,
                        250, 298, 310, 311, 425, 426, 427, 303, 304, 133, 259]},
    "aarch64": {"audit": 0xC00000B7, "mount_setattr": 442, "pivot_root": 41, "clone": 220, "clone3": 435,
                "fork": [], "capset": 91, "socket": 198,
                "deny": [97, 268, 40, 39, 41, 51, 117, 428, 429, 430, 431, 432, 433, 442, 280, 282, 217, 218,
                         219, 241, 270, 271, 425, 426, 427, 264, 265, 33]},
}
ARCH = SYSCALLS.get(platform.machine())
PLAIN = (type(None), bool, int, float, str)


def encode(value, depth=0):
    """A plain value as tagged JSON: None/bool/int/float/str/list as themselves; tuple, set,
    frozenset, dict (as pairs), bytes, complex and range tagged; iterators materialised (tag
    ``iter``); numpy values through ``tolist()``. Anything else (subclasses too) raises TypeError."""
    kind = type(value)
    if depth > 64:
        raise ValueError("nested deeper than 64")
    if kind in PLAIN:
        return value
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind in TAGGED:
        return {kind.__name__: TAGGED[kind](value, depth + 1)}
    if kind.__module__ == "numpy" and hasattr(value, "tolist"):
        return encode(value.tolist(), depth + 1)
    if hasattr(kind, "__next__") and hasattr(kind, "__iter__"):
        return {"iter": [encode(v, depth + 1) for v in value]}
    raise TypeError(f"a {kind.__name__} is not a plain value")


def _items(value, depth):
    return [encode(v, depth) for v in value]


TAGGED = {tuple: _items, set: _items, frozenset: _items, bytes: lambda v, d: v.hex(),
          dict: lambda v, d: [[encode(k, d), encode(x, d)] for k, x in v.items()],
          complex: lambda v, d: [v.real, v.imag], range: lambda v, d: [v.start, v.stop, v.step]}


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


def set_attr(libc, path, attrs, recursive=True):
    """mount_setattr(AT_FDCWD, path, AT_RECURSIVE?, {attr_set=attrs}) == 0."""
    if ARCH is None:
        return False
    buf = ctypes.create_string_buffer(struct.pack("QQQQ", attrs, 0, 0, 0), 32)
    return libc.syscall(ARCH["mount_setattr"], -100, path.encode(), 0x8000 if recursive else 0, buf, 32) == 0


def jail_binds():
    """(host path, path in the jail) of what the interpreter needs: /usr (and /lib, /bin... when
    they are real directories), every existing ``sys.path`` entry, a few /dev nodes."""
    binds = [("/usr", "/usr")] + [(p, p) for p in ("/lib", "/lib64", "/bin") if os.path.isdir(p)
                                  and not os.path.islink(p)]
    for path in sorted(p for p in sys.path if p and os.path.isabs(p) and os.path.exists(p)):
        if not any(path == t or path.startswith(t.rstrip("/") + "/") for _, t in binds):
            binds.append((os.path.realpath(path), path))
    return binds + [(p, p) for p in DEV_NODES if os.path.exists(p)]


def build_jail(libc, root):
    """An empty tmpfs at ``root`` holding read-only binds of :func:`jail_binds` (still in the host tree)."""
    if ARCH is None or libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    if libc.mount(b"tmpfs", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=4m,mode=0755") != 0:
        return False
    for name in ("lib", "lib64", "bin", "sbin"):
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), f"{root}/{name}")
    for src, target in jail_binds():
        inside = root + target
        if os.path.isdir(src):
            os.makedirs(inside, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
            open(inside, "a").close()
        attrs = ATTR_RDONLY | ATTR_NOSUID | (0 if target in DEV_NODES else ATTR_NODEV)
        if libc.mount(src.encode(), inside.encode(), None, MS_BIND | MS_REC, None) != 0 or \
                not set_attr(libc, inside, attrs):
            return False
    for name in ("proc", JAIL_CWD[1:]):
        os.makedirs(f"{root}/{name}", mode=0o755, exist_ok=True)
    return True


def enter_jail(libc, root):
    """From pid 1: fresh /proc in the jail, pivot into it, detach the host tree, read-only root,
    16 MiB tmpfs at /sandbox. True iff all of it held."""
    if ARCH is None:
        return False
    proc = libc.mount(b"proc", f"{root}/proc".encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0
    os.chdir(root)
    if not proc or libc.syscall(ARCH["pivot_root"], b".", b".") != 0 or libc.umount2(b".", 2) != 0:  # MNT_DETACH
        return False
    os.chdir("/")
    return set_attr(libc, "/", ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV, recursive=False) and libc.mount(
        b"tmpfs", JAIL_CWD.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=16m,mode=0777") == 0


def set_limits(cfg):
    """CPU, memory, file size (= output cap), no core, 256 fds, and always a task cap (threads count)."""
    cpu = max(1, int(-(-cfg["cpu_time"] // 1)))
    tasks = (cfg["max_processes"] if cfg["max_processes"] > 1 else cfg["max_tasks"]) + cfg["nproc_extra"]
    limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, cfg["memory_mb"] << 20, cfg["memory_mb"] << 20),
              (resource.RLIMIT_FSIZE, cfg["max_output_bytes"], cfg["max_output_bytes"]), (resource.RLIMIT_CORE, 0, 0),
              (resource.RLIMIT_NOFILE, 256, 256), (resource.RLIMIT_NPROC, tasks, tasks)]
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass


def drop_privileges(libc, mapped_nobody):
    """Empty the capability bounding set, switch to ``nobody`` when mapped, clear all capabilities."""
    ul = ctypes.c_ulong
    for cap in range(64):
        libc.prctl(24, ul(cap), ul(0), ul(0), ul(0))  # PR_CAPBSET_DROP (fails past the last cap)
    if mapped_nobody:
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        except OSError:
            pass
    if ARCH is not None:
        header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
        libc.syscall(ARCH["capset"], header, ctypes.create_string_buffer(24))


def seccomp(libc, no_fork):
    """Install the filter: x32 calls, SYSCALLS[...]["deny"] and socket(AF_UNIX) get EPERM; with
    ``no_fork`` also fork, vfork and clone without CLONE_THREAD (EPERM) and clone3 (ENOSYS)."""
    if ARCH is None:
        return False
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, ARCH["audit"]), (ret, 0, 0, eperm), (ld, 0, 0, 0),
            (jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    for n in ARCH["deny"] + (ARCH["fork"] if no_fork else []):
        prog += [(jeq, 0, 1, n), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 4, ARCH["socket"]), (ld, 0, 0, 16), (jeq, 0, 1, AF_UNIX), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    if no_fork:
        prog += [(jeq, 0, 1, ARCH["clone3"]), (ret, 0, 0, enosys), (jeq, 1, 0, ARCH["clone"]), (ret, 0, 0, allow),
                 (ld, 0, 0, 16), (jset, 1, 0, 0x10000), (ret, 0, 0, eperm)]
    prog.append((ret, 0, 0, allow))
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    filt = ctypes.create_string_buffer(raw, len(raw))
    fbuf = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(filt)), 16)
    ul = ctypes.c_ulong
    if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, ul(2), ul(ctypes.addressof(fbuf)), ul(0), ul(0)) == 0  # PR_SET_SECCOMP, FILTER


def die_with_parent(libc, parent):
    libc.prctl(1, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if os.getppid() != parent:  # PR_SET_PDEATHSIG: the parent already died
        os._exit(1)


def checked_status(pid, cfg, held):
    """What the program process holds, read by init from /proc (not claimed by the program)."""
    with open(f"/proc/{pid}/status") as f:
        st = {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
    no_caps = int(st.get("CapEff", "1"), 16) == 0 and int(st.get("CapBnd", "1"), 16) == 0
    uid = int(st.get("Uid", "0").split()[0])
    filtered = st.get("Seccomp") == "2" and st.get("NoNewPrivs") == "1"
    return {"unprivileged": no_caps and (uid != 0 or (held["user_namespace"] and cfg["host_uid"] != 0)),
            "syscall_filter": filtered, "no_fork": filtered and cfg["max_processes"] <= 1}


def runner(libc, cfg, job, held):
    """pid 1 of the new pid namespace: enter the jail, fork the program, check it, report."""
    os.setsid()
    parent = held.pop("parent")
    jailed = held.pop("jail_built") and enter_jail(libc, cfg["jail"])
    held["filesystem"] = bool(jailed)
    held["pid_namespace"] = bool(jailed) and os.getpid() == 1 and os.listdir("/proc") is not None
    held.update(unprivileged=False, syscall_filter=False, no_fork=False)
    die_with_parent(libc, 0 if os.getpid() == 1 else parent)
    (ready_r, ready_w), (ack_r, ack_w) = os.pipe(), os.pipe()
    pid = os.fork()
    close_channel(cfg, pid)
    if pid == 0:
        os.close(ready_r)
        os.close(ack_w)
        run_child(execute, libc, cfg, job, held, ready_w, ack_r, JAIL_CWD if jailed else cfg["workdir"])
    libc.prctl(4, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))  # not dumpable
    os.close(ready_w)
    os.close(ack_r)
    if os.read(ready_r, 1) == b"1" and (jailed or os.getpid() != 1):  # a /proc that shows our namespace
        held.update(checked_status(pid, cfg, held))
    os.write(ack_w, b"1")
    os.close(ack_w)
    status, timed_out = wait_until(pid, time.monotonic() + cfg["wall_time"])
    held.pop("mapped_nobody", None)
    os.write(cfg["report_fd"], json.dumps({"isolation": held, "status": status, "timed_out": timed_out}).encode())
    os._exit(0)


def wait_until(pid, deadline):
    """Wait for the program until ``deadline``; past it, kill every process of the namespace."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, False
        if time.monotonic() > deadline:
            os.kill(-1 if os.getpid() == 1 else pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1], True
        time.sleep(0.005)


def execute(libc, cfg, job, held, ready_w, ack_r, cwd):
    """The program's process: only its own descriptors, no privileges, limits, seccomp, then the program."""
    keep = {0, 1, 2, cfg["results_fd"], ready_w, ack_r, *cfg["channel"]}
    for fd in map(int, os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd")):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    os.chdir(cwd)
    # tasks of the same uid in this user namespace (the init when it is not nobody); all host tasks outside one
    cfg["nproc_extra"] = (int(not held["mapped_nobody"]) if held["user_namespace"] else cfg["nproc_base"])
    drop_privileges(libc, held["mapped_nobody"])
    die_with_parent(libc, os.getppid())  # the namespace's init; set after the uid change, which clears it
    set_limits(cfg)
    seccomp(libc, cfg["max_processes"] <= 1)
    os.write(ready_w, b"1")
    os.close(ready_w)
    os.read(ack_r, 1)  # init has read our /proc status
    os.close(ack_r)
    program, calls, results, channel, proxy = job["program"], job["calls"], cfg["results_fd"], cfg["channel"], \
        job.get("proxy")
    del job, cfg, held
    if proxy is not None:  # one end of a test that calls the program through proxies (reward_models/_proxy.py)
        module: dict = {"__name__": "_proxy"}
        exec(compile(proxy.pop("source"), "_proxy.py", "exec"), module)
        module["encode"] = encode
        module[proxy["role"]](program, calls, results, channel, proxy)
    elif calls is None:
        sys.argv = ["solution.py"]
        exec(compile(program, "solution.py", "exec"), {"__name__": "__main__"})
    else:
        run_calls(program, calls, results)


def run_calls(program, calls, fd):
    """Load the program as module ``solution``, then evaluate each call; one JSON line each."""
    namespace = {"__name__": "solution"}
    try:
        exec(compile(program, "solution.py", "exec"), namespace)
    except BaseException as err:  # noqa: BLE001 - a failing solution fails every call
        os.write(fd, json.dumps({"load": type(err).__name__}).encode() + b"\n")
        return
    os.write(fd, b'{"load": null}\n')
    for i, call in enumerate(calls):
        try:
            line = {"value": encode(eval(compile(call, f"call_{i}", "eval"), namespace))}
            text = json.dumps(line)
        except BaseException as err:  # noqa: BLE001 - the call failed: that test fails
            text = json.dumps({"error": type(err).__name__})
        os.write(fd, text.encode() + b"\n")


def close_channel(cfg, pid):
    """After a fork, the parent lets go of the proxy channel (only the program process holds it, so
    the other end sees EOF when the program dies)."""
    for fd in cfg["channel"] if pid else ():
        os.close(fd)


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


def setup(libc, cfg, job, sync_r, go_w):
    """New namespaces; wait for the host to write the id maps; build the jail; fork the runner."""
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | (0 if cfg["network"] else
                                                                                      CLONE_NEWNET)
    unshared = libc.unshare(flags) == 0
    os.write(go_w, b"1" if unshared else b"0")
    mapped = os.read(sync_r, 1)
    userns = unshared and mapped in (b"1", b"2")
    held = {"user_namespace": userns, "network": unshared and not cfg["network"], "mapped_nobody": mapped == b"2",
            "parent": os.getpid(), "jail_built": userns and build_jail(libc, cfg["jail"])}
    pid = os.fork()
    close_channel(cfg, pid)
    if pid == 0:
        run_child(runner, libc, cfg, job, held)
    os.waitpid(pid, 0)
    os._exit(0)


def main():
    cfg = json.loads(sys.argv[1])
    cfg["host_uid"] = os.getuid()
    with open(cfg["job_path"]) as f:
        job = json.load(f)
    libc = ctypes.CDLL(None, use_errno=True)
    (to_setup_r, to_setup_w), (to_boot_r, to_boot_w) = os.pipe(), os.pipe()
    boot = os.getpid()
    pid = os.fork()
    if pid == 0:
        die_with_parent(libc, boot)
        run_child(setup, libc, cfg, job, to_setup_r, to_boot_w)
    os.close(cfg["report_fd"])
    os.close(cfg["results_fd"])
    close_channel(cfg, pid)
    unshared = os.read(to_boot_r, 1) == b"1"
    os.write(to_setup_w, write_maps(pid, os.getuid(), os.getgid()) if unshared else b"0")
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
