/* bemcp-sandbox-exec: confine this process, then become the program.
 *
 *   bemcp-sandbox-exec RULESET_FD FLAGS PROGRAM ARGV0 [ARG...]
 *   bemcp-sandbox-exec RULESET_FD FLAGS --probe
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
 *   3. installs a seccomp filter for what Landlock does not govern (see confine.h);
 *   4. enforces the ruleset (files, TCP, signal and abstract-socket scoping);
 *   5. execs PROGRAM with ARGV0 [ARG...] and the environment it was given.
 *
 * A failure in steps 1-5 is reported as a shell would: a line on stderr ("bemcp sandbox:
 * cannot run PROGRAM: Permission denied"), exit status 126 (127 when the program does
 * not exist). It never runs the program less confined than asked. FLAGS: "n" lets the
 * program use IPv4 and IPv6 sockets ("-": it may not).
 * --probe does steps 1-4 and exits 0: bemcp runs it once at start to fail closed.
 *
 * The steps live in confine.h. The process tools run them in their own vfork child
 * (the _spawn extension: no extra exec at all); this program serves every other
 * spawner, which cannot run code between fork and exec without CPython's slow,
 * thread-unsafe preexec_fn: asyncio's subprocess in the git plugin, the process tools
 * without extensions (BEMCP_NO_EXTENSIONS), and the probe at start. It is freestanding
 * (no C library, its own _start and system calls): measured here, its extra exec costs
 * ~40 us, against ~340 us for the same program linked with a static glibc.
 */
#include "confine.h"

#if defined(__x86_64__)

__asm__(".text\n.globl _start\n_start:\n"
        "  xor %rbp, %rbp\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call start_c\n  hlt\n");
#elif defined(__aarch64__)

__asm__(".text\n.globl _start\n_start:\n  mov x29, #0\n  mov x30, #0\n  mov x0, sp\n  bl start_c\n");
#else
#error "bemcp-sandbox-exec: x86-64 and AArch64 only (setup.py skips it elsewhere)"
#endif

/* The compiler may call these for struct copies and zeroing. */
void *memset(void *dest, int c, size_t n) {
    volatile unsigned char *p = dest;
    while (n--) *p++ = (unsigned char)c;
    return dest;
}

void *memcpy(void *dest, const void *src, size_t n) {
    volatile unsigned char *d = dest;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dest;
}

static int parse_fd(const char *s) {
    long v = 0;
    if (same(s, "-1")) return -1;
    if (!*s) return -2;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 1 << 20) return -2;
        v = v * 10 + (*s - '0');
    }
    return (int)v;
}

static const char usage[] =
    "usage: bemcp-sandbox-exec RULESET_FD FLAGS PROGRAM ARGV0 [ARG...]\n"
    "(started by bemcp serve --sandbox, not by hand)\n";

__attribute__((used, noreturn)) void start_c(long *sp) {
    long argc = sp[0], err;
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    int probe = argc == 4 && same(argv[3], "--probe");
    if (argc < 5 && !probe) {
        put(2, usage);
        leave(2);
    }
    int ruleset = parse_fd(argv[1]);
    if (ruleset < 0) fail("ruleset descriptor", EBADF);
    const char *flags = argv[2], *stage = "";
    int network = 0;
    for (; *flags; flags++) network |= *flags == 'n';
    if ((err = confine(ruleset, network, &stage)) != 0) fail(stage, -err);
    SYS(__NR_close, ruleset, 0, 0);
    if (probe) leave(0);
    err = SYS(__NR_execve, argv[3], argv + 4, envp);
    fail_exec(argv[3], -err);
}
