/* bemcp.security._spawn: start a command confined by the sandbox, in one vfork.
 *
 * The process tools' fast path with --sandbox. Like CPython's _posixsubprocess (vfork,
 * then exec), with the sandbox's steps (confine.h) between the two, so the program is
 * exec'd once, without the exec helper in front: measured here, that extra exec was
 * most of what the sandbox cost a short command.
 *
 * spawn(executable, argv, envp, cwd, stdin, stdout, stderr, ruleset, network) -> pid
 * (bytes, [bytes], [bytes], bytes: b"" to stay in the current directory, then ints)
 *
 * The child leads a new session, gets the three descriptors as 0, 1, 2 and nothing else
 * (every other descriptor is closed at exec), changes to cwd, confines itself and execs.
 * A chdir that fails raises OSError here (the child reports it through a pipe); a
 * confinement or exec that fails is the command's own, as with the helper: a line on
 * its stderr, exit status 126 (127: no such program).
 *
 * vfork discipline: the child shares the parent's memory until it execs, so it only
 * makes system calls (confine.h's, which leave errno alone) and writes nothing but its
 * own stack. Every signal is blocked around vfork, and the child sets the parent's
 * handlers back to the default before unblocking: a handler of the server must never
 * run in the child.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "confine.h"

#ifndef __NR_close_range
#define __NR_close_range 436
#endif
#define CLOSE_RANGE_CLOEXEC_FLAG (1U << 2)
#define KERNEL_SIGSET_SIZE 8              /* the kernel's sigset_t on 64-bit Linux */

static __attribute__((noreturn)) void child(const char *exe, char *const *argv, char *const *envp,
                                            const char *cwd, const int *fds, int ruleset,
                                            int network, int report, const sigset_t *mask) {
    long err, sig, i;
    int moved[3];
    const char *stage = "";
    /* Handlers back to the default (a handler's address is the first word of both the
       kernel's and the C library's struct sigaction; an all-zero one is SIG_DFL). */
    unsigned long act[4], none[4] = {0, 0, 0, 0};
    for (sig = 1; sig < 65; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sys6(__NR_rt_sigaction, sig, 0, (long)act, KERNEL_SIGSET_SIZE, 0, 0) != 0)
            continue;
        if (act[0] != (unsigned long)SIG_IGN && act[0] != (unsigned long)SIG_DFL)
            sys6(__NR_rt_sigaction, sig, (long)none, 0, KERNEL_SIGSET_SIZE, 0, 0);
    }
    sys6(__NR_rt_sigprocmask, SIG_SETMASK, (long)mask, 0, KERNEL_SIGSET_SIZE, 0, 0);
    if ((err = SYS(__NR_setsid, 0, 0, 0)) < 0)
        goto report;
    /* 0, 1, 2 from the three descriptors, whatever their numbers */
    for (i = 0; i < 3; i++) {
        moved[i] = fds[i];
        if (fds[i] < 3 && fds[i] != i && (moved[i] = (int)SYS(__NR_fcntl, fds[i], F_DUPFD_CLOEXEC, 3)) < 0) {
            err = moved[i];
            goto report;
        }
    }
    for (i = 0; i < 3; i++) {
        err = moved[i] == i ? SYS(__NR_fcntl, i, F_SETFD, 0) : SYS(__NR_dup3, moved[i], i, 0);
        if (err < 0)
            goto report;
    }
    if ((err = SYS(__NR_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC_FLAG)) != 0)
        goto report;
    if (*cwd && (err = SYS(__NR_chdir, cwd, 0, 0)) != 0) {
        stage = "chdir";
        goto report;
    }
    if ((err = confine(ruleset, network, &stage)) != 0)
        fail(stage, -err);
    err = SYS(__NR_execve, exe, argv, envp);
    fail_exec(exe, -err);
report:
    {
        char line[48];
        int n = 0;
        long v = -err;
        char digits[24];
        int d = 0;
        const char *s = stage;
        while (*s && n < 16) line[n++] = *s++;
        line[n++] = ':';
        do digits[d++] = (char)('0' + v % 10); while ((v /= 10) && d < 20);
        while (d) line[n++] = digits[--d];
        SYS(__NR_write, report, line, n);
    }
    leave(127);
}

/* vfork, kept apart from the Python bookkeeping so that nothing the parent holds in
   registers across it can be clobbered; the child never returns from here. */
static __attribute__((noinline)) pid_t start(const char *exe, char *const *argv, char *const *envp,
                                             const char *cwd, const int *fds, int ruleset,
                                             int network, int report, int *saved_errno) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = vfork();
    if (pid == 0)
        child(exe, argv, envp, cwd, fds, ruleset, network, report, &old);
    *saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pid;
}

/* A NULL-terminated array of the bytes in ``seq`` (kept alive by ``seq``); NULL on error. */
static char **strings(PyObject *seq) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i;
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyMem_Free(out);
            PyErr_SetString(PyExc_TypeError, "argv and envp must hold bytes");
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    return out;
}

static PyObject *spawn(PyObject *module, PyObject *args) {
    const char *exe, *cwd;
    PyObject *argv_obj, *envp_obj, *argv_seq = NULL, *envp_seq = NULL, *result = NULL;
    char **argv = NULL, **envp = NULL;
    int fds[3], ruleset, network, pipefd[2] = {-1, -1};
    (void)module;
    if (!PyArg_ParseTuple(args, "yOOyiiiip:spawn", &exe, &argv_obj, &envp_obj, &cwd,
                          &fds[0], &fds[1], &fds[2], &ruleset, &network))
        return NULL;
    if ((argv_seq = PySequence_Fast(argv_obj, "argv must be a sequence")) == NULL ||
            (envp_seq = PySequence_Fast(envp_obj, "envp must be a sequence")) == NULL ||
            (argv = strings(argv_seq)) == NULL || (envp = strings(envp_seq)) == NULL)
        goto done;
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    int saved = 0;
    pid_t pid = start(exe, argv, envp, cwd, fds, ruleset, network, pipefd[1], &saved);
    close(pipefd[1]);
    if (pid < 0) {
        errno = saved;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    /* End of file once the child exec'd (or exited): the pipe is close-on-exec. */
    char report[64];
    ssize_t got = 0, n;
    while ((n = read(pipefd[0], report + got, sizeof report - 1 - (size_t)got)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += n;
        if ((size_t)got >= sizeof report - 1)
            break;
    }
    if (got == 0) {
        result = PyLong_FromLong((long)pid);
        goto done;
    }
    report[got] = '\0';
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    char *colon = strrchr(report, ':');
    int code = colon != NULL ? atoi(colon + 1) : EIO;
    PyObject *error = strncmp(report, "chdir:", 6) == 0
        ? Py_BuildValue("(isN)", code, strerror(code), PyUnicode_DecodeFSDefault(cwd))
        : Py_BuildValue("(is)", code, strerror(code));
    if (error != NULL) {
        PyErr_SetObject(PyExc_OSError, error);
        Py_DECREF(error);
    }
done:
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(argv_seq);
    Py_XDECREF(envp_seq);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS,
     "spawn(executable, argv, envp, cwd, stdin, stdout, stderr, ruleset, network) -> pid\n\n"
     "Start a program confined by the sandbox's ruleset, in its own session."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "bemcp.security._spawn",
                                    "Start a command confined by the sandbox, in one vfork.",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__spawn(void) {
    return PyModule_Create(&module);
}
