/* bemcp-sandbox-exec: confine this process, then become the program.
 *
 *   bemcp-sandbox-exec RULESET_FD REPORT_FD FLAGS PROGRAM ARGV0 [ARG...]
 *   bemcp-sandbox-exec RULESET_FD REPORT_FD FLAGS --probe
 *
 * bemcp builds one Landlock ruleset when it starts (bemcp/security/sandbox.py) and
 * starts every sandboxed command as this helper with the ruleset's descriptor. Between
 * its own exec and the program's, the helper
 *
 *   1. sets no_new_privs (a setuid or file-capability program gains nothing);
 *   2. drops every capability: the bounding set, the ambient set, then the effective,
 *      permitted and inheritable sets, and locks the securebits so that uid 0 is not
 *      given them back at exec. Landlock lets holders of CAP_SYS_ADMIN or CAP_PERFMON
 *      past its ptrace check, which guards /proc/<pid>/environ of other processes;
 *   3. installs a seccomp filter for what Landlock does not govern (see below);
 *   4. enforces the ruleset (files, TCP, signal and abstract-socket scoping);
 *   5. execs PROGRAM with ARGV0 [ARG...] and the environment it was given.
 *
 * A failure in steps 1-5 is written to REPORT_FD as "STAGE:ERRNO" (bemcp raises it as
 * the command's start error), or to stderr when REPORT_FD is -1, and the helper exits
 * 126 (127 when the program does not exist). REPORT_FD is close-on-exec: bemcp reads
 * end-of-file once the program runs. It never runs the program less confined than
 * asked. FLAGS: "n" lets the program use IPv4 and IPv6 sockets ("-": it may not).
 * --probe does steps 1-4 and exits 0: bemcp runs it once at start to fail closed.
 *
 * The seccomp filter answers with an error (never kills, except a foreign-ABI call):
 *   - socket(): only AF_UNIX and AF_NETLINK, plus AF_INET/AF_INET6 with "n". Landlock
 *     (ABI 4+) covers TCP bind and connect only; refusing the socket closes UDP, raw
 *     sockets and listen() without bind() as well. EACCES ("Permission denied").
 *   - io_uring_setup: io_uring submits socket and file operations without the system
 *     calls this filter sees. ENOSYS, so programs fall back to plain system calls.
 *   - chown and its variants: Landlock does not govern file ownership; without
 *     capabilities a process can only "give" a file to itself anyway. EPERM.
 *   - ioctl TIOCSTI and TIOCLINUX: no typing into a terminal. EPERM.
 *   - any system call of another ABI (i386 or x32 on x86-64): the process is killed,
 *     since the filter's numbers are those of the native ABI.
 *
 * Built by setup.py as a small program rather than a Python extension: it runs between
 * fork and exec, which an extension could only do through preexec_fn (CPython's slow,
 * thread-unsafe fork path) or by replacing CPython's vfork spawner; as a program it is
 * one extra exec on the fast path, and every spawner (the process tools, asyncio's
 * subprocess in plugins) can start it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

extern char **environ;

/* The kernel's numbers; system headers may predate them. */
#ifndef __NR_landlock_restrict_self
#define __NR_landlock_restrict_self 446
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef PR_SET_SECUREBITS
#define PR_SET_SECUREBITS 28
#endif
/* SECBIT_NOROOT, _NO_SETUID_FIXUP, _KEEP_CAPS, _NO_CAP_AMBIENT_RAISE and their locks
   (bits 0-7), with KEEP_CAPS itself off. */
#define SECURE_ALL_LOCKED 0xEF
#define TIOCSTI_NR 0x5412
#define TIOCLINUX_NR 0x541C

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define X32_SYSCALL_BIT 0x40000000
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#elif defined(__riscv) && __riscv_xlen == 64
#define NATIVE_ARCH AUDIT_ARCH_RISCV64
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NATIVE_ARCH AUDIT_ARCH_PPC64LE
#elif defined(__s390x__)
#define NATIVE_ARCH AUDIT_ARCH_S390X
#else
#error "bemcp-sandbox-exec: unknown architecture for the seccomp filter"
#endif

static int report_fd = -1;

static void fail(const char *stage, int err) {
    char line[64];
    int n;
    if (report_fd >= 0) {
        n = snprintf(line, sizeof line, "%s:%d", stage, err);
        if (write(report_fd, line, (size_t)n) < 0) { /* nobody to tell */ }
    } else {
        n = snprintf(line, sizeof line, "bemcp sandbox: %s: ", stage);
        if (write(2, line, (size_t)n) < 0 || write(2, strerror(err), strlen(strerror(err))) < 0
                || write(2, "\n", 1) < 0) { /* nothing more to do */ }
    }
    _exit(err == ENOENT && strcmp(stage, "exec") == 0 ? 127 : 126);
}

static int parse_fd(const char *s) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < -1 || v > 1 << 20) return -2;
    return (int)v;
}

static void drop_capabilities(void) {
    int cap, root = getuid() == 0 || geteuid() == 0;
    for (cap = 0; cap < 64; cap++) {
        int has = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (has < 0) break;                 /* past the kernel's last capability */
        if (has && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && root)
            fail("capability bounding set", errno);
    }
    if (prctl(PR_SET_SECUREBITS, SECURE_ALL_LOCKED, 0, 0, 0) != 0 && root)
        fail("securebits", errno);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        fail("ambient capabilities", errno);
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0)
        fail("capabilities", errno);
}

#define STMT(code, k) ((struct sock_filter)BPF_STMT((code), (k)))
#define JUMP(value, jt, jf) ((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (value), (jt), (jf)))
#define LOAD(offset) STMT(BPF_LD | BPF_W | BPF_ABS, (offset))
#define RET(value) STMT(BPF_RET | BPF_K, (value))
#define NR offsetof(struct seccomp_data, nr)
#define ARG_LOW(n) offsetof(struct seccomp_data, args[n])   /* int arguments: the low word */

/* System calls answered EPERM whatever their arguments. */
static const int refused[] = {
#ifdef __NR_chown
    __NR_chown,
#endif
#ifdef __NR_lchown
    __NR_lchown,
#endif
    __NR_fchown, __NR_fchownat,
};

static void install_filter(int network) {
    struct sock_filter f[64];
    unsigned n = 0, i;
    unsigned inet = network ? SECCOMP_RET_ALLOW : SECCOMP_RET_ERRNO | EACCES;
    f[n++] = LOAD(offsetof(struct seccomp_data, arch));
    f[n++] = JUMP(NATIVE_ARCH, 1, 0);
    f[n++] = RET(SECCOMP_RET_KILL_PROCESS);
    f[n++] = LOAD(NR);
#ifdef X32_SYSCALL_BIT
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1);
    f[n++] = RET(SECCOMP_RET_KILL_PROCESS);
#endif
    for (i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        f[n++] = JUMP((unsigned)refused[i], 0, 1);
        f[n++] = RET(SECCOMP_RET_ERRNO | EPERM);
    }
    f[n++] = JUMP(__NR_io_uring_setup, 0, 1);
    f[n++] = RET(SECCOMP_RET_ERRNO | ENOSYS);
    /* socket(family, ...): the jumps count the instructions they skip */
    f[n++] = JUMP(__NR_socket, 0, 8);
    f[n++] = LOAD(ARG_LOW(0));
    f[n++] = JUMP(AF_UNIX, 5, 0);           /* -> allow */
    f[n++] = JUMP(AF_NETLINK, 4, 0);        /* -> allow */
    f[n++] = JUMP(AF_INET, 1, 0);           /* -> inet */
    f[n++] = JUMP(AF_INET6, 0, 1);          /* -> inet, else -> refuse */
    f[n++] = RET(inet);
    f[n++] = RET(SECCOMP_RET_ERRNO | EACCES);
    f[n++] = RET(SECCOMP_RET_ALLOW);
    /* ioctl(fd, request): no typing into a terminal */
    f[n++] = JUMP(__NR_ioctl, 0, 4);
    f[n++] = LOAD(ARG_LOW(1));
    f[n++] = JUMP(TIOCSTI_NR, 1, 0);
    f[n++] = JUMP(TIOCLINUX_NR, 0, 1);
    f[n++] = RET(SECCOMP_RET_ERRNO | EPERM);
    f[n++] = RET(SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {(unsigned short)n, f};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
        fail("seccomp", errno);
}

int main(int argc, char **argv) {
    int probe = argc == 5 && strcmp(argv[4], "--probe") == 0;
    if (argc < 6 && !probe) {
        static const char usage[] =
            "usage: bemcp-sandbox-exec RULESET_FD REPORT_FD FLAGS PROGRAM ARGV0 [ARG...]\n"
            "(started by bemcp serve --sandbox, not by hand)\n";
        if (write(2, usage, sizeof usage - 1) < 0) { /* nothing to do */ }
        return 2;
    }
    int ruleset = parse_fd(argv[1]);
    report_fd = parse_fd(argv[2]);
    if (report_fd < -1) report_fd = -1;
    if (ruleset < 0) fail("ruleset descriptor", EBADF);
    if (report_fd >= 0) fcntl(report_fd, F_SETFD, FD_CLOEXEC);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("no_new_privs", errno);
    drop_capabilities();
    install_filter(strchr(argv[3], 'n') != NULL);
    if (syscall(__NR_landlock_restrict_self, ruleset, 0) != 0) fail("landlock", errno);
    close(ruleset);
    if (probe) return 0;
    execve(argv[4], argv + 5, environ);
    fail("exec", errno);
    return 126;
}
