"""Run a command under a seccomp filter as systemd builds it from the unit's
`SystemCallFilter=` and `SystemCallErrorNumber=EPERM` lines: the syscalls named on the command
line are allowed, every other one fails with EPERM. Uses libseccomp (libseccomp2) via ctypes.

    python seccomp_exec.py SYSCALL,SYSCALL,... -- COMMAND ARGS...
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0x0000FFFF)


def main() -> None:
    allowed, command = sys.argv[1].split(","), sys.argv[3:]
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(scmp_act_errno(errno.EPERM))
    for name in allowed:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:  # a name this architecture does not have is left out, as systemd does
            assert lib.seccomp_rule_add(context, SCMP_ACT_ALLOW, number, 0) == 0, name
    assert lib.seccomp_load(context) == 0, "seccomp_load failed"
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
