/* The confinement of a sandboxed command, shared by the exec helper (sandbox_exec.c)
 * and the spawner extension (_spawn.c): no_new_privs, no capabilities, the seccomp
 * filter, the Landlock ruleset. Runs in the child between fork and exec: system calls
 * only, through the includer's sys6(), which returns -errno on failure.
 *
 * The seccomp filter answers with an error (never kills, except a foreign-ABI call):
 *   - socket(): only AF_UNIX and AF_NETLINK, plus AF_INET/AF_INET6 with the network
 *     allowed. Landlock (ABI 4+) covers TCP bind and connect only; refusing the socket
 *     closes UDP, raw sockets and listen() without bind() as well. EACCES.
 *   - io_uring_setup: io_uring submits socket and file operations without the system
 *     calls this filter sees. ENOSYS, so programs fall back to plain system calls.
 *   - chown and its variants: Landlock does not govern file ownership; without
 *     capabilities a process can only "give" a file to itself anyway. EPERM.
 *   - ioctl TIOCSTI and TIOCLINUX: no typing into a terminal. EPERM.
 *   - any system call of another ABI (i386 or x32 on x86-64): the process is killed,
 *     since the filter's numbers are those of the native ABI.
 */
#ifndef BEMCP_CONFINE_H
#define BEMCP_CONFINE_H

#include <stddef.h>
#include <asm/unistd.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/errno.h>
#include <linux/filter.h>
#include <linux/prctl.h>
#include <linux/seccomp.h>

/* The kernel's numbers; system headers may predate them. */
#ifndef __NR_landlock_restrict_self
#define __NR_landlock_restrict_self 446
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_seccomp
#define __NR_seccomp 317
#endif
#ifndef SECCOMP_SET_MODE_FILTER
#define SECCOMP_SET_MODE_FILTER 1
#endif
#ifndef SECCOMP_FILTER_FLAG_SPEC_ALLOW
#define SECCOMP_FILTER_FLAG_SPEC_ALLOW (1UL << 2)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
/* SECBIT_NOROOT, _NO_SETUID_FIXUP, _KEEP_CAPS, _NO_CAP_AMBIENT_RAISE and their locks
   (bits 0-7), with KEEP_CAPS itself off. */
#define SECURE_ALL_LOCKED 0xEF
#define TIOCSTI_NR 0x5412
#define TIOCLINUX_NR 0x541C
#define AF_UNIX_NR 1
#define AF_INET_NR 2
#define AF_INET6_NR 10
#define AF_NETLINK_NR 16

/* System calls without the C library: a vfork child must not touch the parent's
   errno, and the helper has no C library. -errno on failure. */
#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define X32_SYSCALL_BIT 0x40000000

static long sys6(long n, long a, long b, long c, long d, long e, long f) {
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64

static long sys6(long n, long a, long b, long c, long d, long e, long f) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc 0" : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory", "cc");
    return x0;
}

#else
#error "bemcp sandbox: x86-64 and AArch64 only (setup.py builds it nowhere else)"
#endif

#define SYS(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define PRCTL(option, arg) sys6(__NR_prctl, (option), (long)(arg), 0, 0, 0, 0)

static size_t length(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static __attribute__((unused)) int same(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static void put(int fd, const char *s) {
    SYS(__NR_write, fd, s, length(s));
}

static const char *reason(long err) {
    switch (err) {
    case EACCES: return "Permission denied";
    case EPERM: return "Operation not permitted";
    case ENOENT: return "No such file or directory";
    case ENOEXEC: return "Exec format error";
    case ENOTDIR: return "Not a directory";
    case ELOOP: return "Too many levels of symbolic links";
    case E2BIG: return "Argument list too long";
    case ENOMEM: return "Cannot allocate memory";
    case EINVAL: return "Invalid argument";
    case EBADF: return "Bad file descriptor";
    case ENOSYS: return "Function not implemented";
    default: return "error";
    }
}

static __attribute__((noreturn)) void leave(long status) {
    for (;;) SYS(__NR_exit_group, status, 0, 0);
}

/* A failure is the command's own: a line on its stderr and a shell's exit status. */
static __attribute__((noreturn)) void fail(const char *stage, long err) {
    put(2, "bemcp sandbox: could not confine the command (");
    put(2, stage);
    put(2, ": ");
    put(2, reason(err));
    put(2, "); it was not run\n");
    leave(126);
}

static __attribute__((noreturn)) void fail_exec(const char *program, long err) {
    put(2, "bemcp sandbox: cannot run ");
    put(2, program);
    put(2, ": ");
    put(2, reason(err));
    if (err == EACCES)
        put(2, " (sandboxed commands run programs only from the roots, the system "
               "directories, the server's PATH and --sandbox-read)");
    put(2, "\n");
    leave(err == ENOENT ? 127 : 126);
}

static long drop_capabilities(const char **stage) {
    long cap, err;
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
    long uid = SYS(__NR_getuid, 0, 0, 0), euid = SYS(__NR_geteuid, 0, 0, 0);
    if ((err = SYS(__NR_capget, &header, data, 0)) != 0)
        return *stage = "capabilities", err;
    /* uid 0 is given the bounding set at exec, so for root it must end up empty. bemcp
       usually emptied it in the thread that starts us, and then we hold no capability
       at all; else we drop what is there (reading first: each drop copies the
       credentials). For anyone else the bounding set grants nothing: no_new_privs
       keeps file capabilities from raising what they hold, and that is cleared below. */
    int holding = data[0].permitted || data[1].permitted;
    int root = uid == 0 || euid == 0;
    for (cap = 0; (holding || root) && cap < 64; cap++) {
        long has = PRCTL(PR_CAPBSET_READ, cap);
        if (has < 0) break;                /* past the kernel's last capability */
        if (has && (err = holding ? PRCTL(PR_CAPBSET_DROP, cap) : -EPERM) != 0 && root)
            return *stage = "capability bounding set", err;
    }
    /* Belt and braces where it can be set: root gets nothing at exec, for good. */
    if (holding)
        PRCTL(PR_SET_SECUREBITS, SECURE_ALL_LOCKED);
    if ((err = sys6(__NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0)) != 0
            && err != -EINVAL)
        return *stage = "ambient capabilities", err;
    data[0].effective = data[0].permitted = data[0].inheritable = 0;
    data[1].effective = data[1].permitted = data[1].inheritable = 0;
    if ((err = SYS(__NR_capset, &header, data, 0)) != 0)
        return *stage = "capabilities", err;
    return 0;
}

#define STMT(code, k) ((struct sock_filter)BPF_STMT((code), (k)))
#define JUMP(op, value, jt, jf) ((struct sock_filter)BPF_JUMP(BPF_JMP | (op) | BPF_K, (value), (jt), (jf)))
#define LOAD(offset) STMT(BPF_LD | BPF_W | BPF_ABS, (offset))
#define RET(value) STMT(BPF_RET | BPF_K, (value))
#define ARG_LOW(n) offsetof(struct seccomp_data, args[n])   /* int arguments: the low word */

/* What the filter does with a system call, by number. */
enum { REFUSE, NO_SUCH_CALL, SOCKET, IOCTL };

struct watched { unsigned nr; int action; };

struct program {
    struct sock_filter f[96];
    unsigned n;
    unsigned inet;            /* the answer to socket(AF_INET*): allow, or EACCES */
};

static unsigned action_size(int action) {
    return action == SOCKET ? 8 : action == IOCTL ? 5 : 1;
}

static void emit_action(struct program *p, int action) {
    struct sock_filter *f = p->f;
    unsigned n = p->n;
    switch (action) {
    case REFUSE:           /* chown and its variants: no file ownership games */
        f[n++] = RET(SECCOMP_RET_ERRNO | EPERM);
        break;
    case NO_SUCH_CALL:     /* io_uring: programs fall back to plain system calls */
        f[n++] = RET(SECCOMP_RET_ERRNO | ENOSYS);
        break;
    case SOCKET:           /* socket(family, ...): the jumps count what they skip */
        f[n++] = LOAD(ARG_LOW(0));
        f[n++] = JUMP(BPF_JEQ, AF_UNIX_NR, 5, 0);        /* -> allow */
        f[n++] = JUMP(BPF_JEQ, AF_NETLINK_NR, 4, 0);     /* -> allow */
        f[n++] = JUMP(BPF_JEQ, AF_INET_NR, 1, 0);        /* -> inet */
        f[n++] = JUMP(BPF_JEQ, AF_INET6_NR, 0, 1);       /* -> inet, else -> refuse */
        f[n++] = RET(p->inet);
        f[n++] = RET(SECCOMP_RET_ERRNO | EACCES);
        f[n++] = RET(SECCOMP_RET_ALLOW);
        break;
    case IOCTL:            /* ioctl(fd, request): no typing into a terminal */
        f[n++] = LOAD(ARG_LOW(1));
        f[n++] = JUMP(BPF_JEQ, TIOCSTI_NR, 1, 0);
        f[n++] = JUMP(BPF_JEQ, TIOCLINUX_NR, 0, 1);
        f[n++] = RET(SECCOMP_RET_ERRNO | EPERM);
        f[n++] = RET(SECCOMP_RET_ALLOW);
        break;
    }
    p->n = n;
}

/* A search tree over the watched numbers (sorted), the accumulator holding the number:
   every other system call is allowed after a few comparisons. Short paths matter: the
   kernel runs the filter for every system call number when it is installed, to cache
   those it always allows, and that is most of what installing it costs. */
static void emit_tree(struct program *p, const struct watched *w, unsigned count) {
    unsigned i, at, mid;
    if (count <= 2) {
        for (i = 0; i < count; i++) {
            p->f[p->n++] = JUMP(BPF_JEQ, w[i].nr, 0, action_size(w[i].action));
            emit_action(p, w[i].action);
        }
        p->f[p->n++] = RET(SECCOMP_RET_ALLOW);
        return;
    }
    mid = count / 2;
    at = p->n++;           /* nr >= w[mid].nr: jump over the left half */
    emit_tree(p, w, mid);
    p->f[at] = JUMP(BPF_JGE, w[mid].nr, p->n - at - 1, 0);
    emit_tree(p, w + mid, count - mid);
}

static long install_filter(int network, const char **stage) {
    struct watched w[] = {
#ifdef __NR_chown
        {__NR_chown, REFUSE},
#endif
#ifdef __NR_lchown
        {__NR_lchown, REFUSE},
#endif
        {__NR_fchown, REFUSE}, {__NR_fchownat, REFUSE}, {__NR_io_uring_setup, NO_SUCH_CALL},
        {__NR_socket, SOCKET}, {__NR_ioctl, IOCTL},
    };
    unsigned count = sizeof w / sizeof w[0], i, k;
    struct program p;
    long err;
    for (i = 1; i < count; i++)           /* insertion sort by number */
        for (k = i; k > 0 && w[k - 1].nr > w[k].nr; k--) {
            struct watched t = w[k];
            w[k] = w[k - 1];
            w[k - 1] = t;
        }
    p.n = 0;
    p.inet = network ? SECCOMP_RET_ALLOW : SECCOMP_RET_ERRNO | EACCES;
    /* Another ABI's numbers would not mean what this filter checks: kill. */
    p.f[p.n++] = LOAD(offsetof(struct seccomp_data, arch));
    p.f[p.n++] = JUMP(BPF_JEQ, NATIVE_ARCH, 1, 0);
    p.f[p.n++] = RET(SECCOMP_RET_KILL_PROCESS);
    p.f[p.n++] = LOAD(offsetof(struct seccomp_data, nr));
#ifdef X32_SYSCALL_BIT
    p.f[p.n++] = JUMP(BPF_JGE, X32_SYSCALL_BIT, 0, 1);
    p.f[p.n++] = RET(SECCOMP_RET_KILL_PROCESS);
#endif
    emit_tree(&p, w, count);
    struct sock_fprog prog = {(unsigned short)p.n, p.f};
    /* SPEC_ALLOW: without it the kernel turns on its speculative-store-bypass mitigation
       for every filtered process (where the CPU needs one), a cost on every context
       switch. It guards a process's memory against itself: the wall here is between
       processes, each with its own address space. */
    err = SYS(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog);
    if (err == -EINVAL)   /* a kernel without the flag (before 4.17) */
        err = SYS(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    if (err != 0)
        return *stage = "seccomp", err;
    return 0;
}

/* Confine the calling thread; 0, or -errno with *stage naming the step that failed. */
static long confine(int ruleset, int network, const char **stage) {
    long err;
    if ((err = PRCTL(PR_SET_NO_NEW_PRIVS, 1)) != 0)
        return *stage = "no_new_privs", err;
    if ((err = drop_capabilities(stage)) != 0 || (err = install_filter(network, stage)) != 0)
        return err;
    if ((err = SYS(__NR_landlock_restrict_self, ruleset, 0, 0)) != 0)
        return *stage = "landlock", err;
    return 0;
}

#endif
