"""Sandbox bootstrap, run as ``python -I _sandbox_boot.py <config json>`` by reward_models.sandbox.

Stdlib only (it runs before any isolation exists). Steps, in order: read the inputs; enter new
user + network + mount namespaces (when the kernel allows); make every mount read-only and mount a
small tmpfs as the working directory; set rlimits; forbid process creation with seccomp
(``max_processes <= 1``); report what isolation holds on the report fd; run the program.
Each step that the OS refuses is skipped and reported, never faked.
"""
import ctypes
import json
import os
import platform
import resource
import struct
import sys

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS = 0x10000000, 0x40000000, 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
# syscall numbers: (mount_setattr, clone, fork, vfork, clone3, AUDIT_ARCH)
ARCH = {"x86_64": (442, 56, 57, 58, 435, 0xC000003E), "aarch64": (442, 220, None, None, 435, 0xC00000B7)}
REPORT_FD = [3]


def report(line):
    os.write(REPORT_FD[0], (line + "\n").encode())


def enter_namespaces(libc, workdir, network):
    """New user (+net) + mount namespace; read-only mounts; tmpfs workdir. Returns (net, fs) isolated."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | (0 if network else CLONE_NEWNET)
    if libc.unshare(flags) != 0:
        if network or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            return False, False
        return True, False
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError:
        return not network, False
    return not network, readonly_root(libc, workdir)


def readonly_root(libc, workdir):
    arch = ARCH.get(platform.machine())
    if arch is None or libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    attr = struct.pack("QQQQ", 1, 0, 0, 0)  # struct mount_attr{attr_set=MOUNT_ATTR_RDONLY}
    buf = ctypes.create_string_buffer(attr, len(attr))
    if libc.syscall(arch[0], -100, b"/", 0x8000, buf, len(attr)) != 0:  # AT_FDCWD, AT_RECURSIVE
        return False
    if libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", 0, b"size=16m,mode=0777") != 0:
        return False
    os.chdir(workdir)
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
    if cfg["max_processes"] > 1 and os.getuid() != 0:  # counts every process of this uid; root ignores it
        limits.append((resource.RLIMIT_NPROC, cfg["nproc_base"] + cfg["max_processes"], cfg["nproc_base"] + cfg["max_processes"]))
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass


def forbid_processes(libc):
    """seccomp: fork/vfork and clone without CLONE_THREAD get EPERM, clone3 ENOSYS (libc falls back)."""
    arch = ARCH.get(platform.machine())
    if arch is None:
        return False
    _, clone, fork, vfork, clone3, audit = arch
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    banned = [n for n in (fork, vfork) if n is not None]
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit), (ret, 0, 0, eperm), (ld, 0, 0, 0), (jeq, 0, 1, clone3), (ret, 0, 0, enosys)]
    for n in banned:
        prog += [(jeq, 0, 1, n), (ret, 0, 0, eperm)]
    prog += [(jeq, 1, 0, clone), (ret, 0, 0, allow), (ld, 0, 0, 16), (jset, 1, 0, 0x10000), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
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


def main():
    cfg = json.loads(sys.argv[1])
    REPORT_FD[0] = cfg["report_fd"]
    with open(cfg["program_path"]) as f:
        program = f.read()
    with open(cfg["tests_path"]) as f:
        tests = json.load(f)
    libc = ctypes.CDLL(None, use_errno=True)
    net, fs = enter_namespaces(libc, cfg["workdir"], cfg["network"])
    if not fs:
        os.chdir(cfg["workdir"])
    set_limits(cfg)
    nofork = forbid_processes(libc) if cfg["max_processes"] <= 1 else False
    report(f"I {int(net)} {int(fs)} {int(nofork)}")
    del cfg, f, libc
    if tests is None:
        sys.argv = ["solution.py"]
        exec(compile(program, "solution.py", "exec"), {"__name__": "__main__"})
    else:
        run_tests(program, tests)


if __name__ == "__main__":
    main()
