from libc.stdint cimport uint64_t
from posix.types cimport ino_t
from cpython.object cimport PyObject
from posix.time cimport timespec

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_attr_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_create(pthread_t*, const pthread_attr_t*, void* (*)(void*) noexcept nogil, void*)
    int pthread_join(pthread_t, void**)
    int pthread_mutex_init(pthread_mutex_t*, const void*)
    int pthread_mutex_destroy(pthread_mutex_t*)
    int pthread_mutex_lock(pthread_mutex_t*)
    int pthread_mutex_unlock(pthread_mutex_t*)
    int pthread_cond_init(pthread_cond_t*, const pthread_condattr_t*)
    int pthread_condattr_init(pthread_condattr_t*)
    int pthread_condattr_setclock(pthread_condattr_t*, int)
    int pthread_condattr_destroy(pthread_condattr_t*)
    int pthread_cond_timedwait(pthread_cond_t*, pthread_mutex_t*, const timespec*)
    int pthread_cond_destroy(pthread_cond_t*)
    int pthread_cond_wait(pthread_cond_t*, pthread_mutex_t*)
    int pthread_cond_signal(pthread_cond_t*)
    int pthread_cond_broadcast(pthread_cond_t*)



# The lines being written: one growing C buffer.
cdef struct Out:
    char* data
    Py_ssize_t len
    Py_ssize_t cap
    bint failed


# Where a request line's id, params.name and params.arguments values lie (-1: absent).
cdef struct Spans:
    Py_ssize_t id_start, id_end, name_start, name_end, args_start, args_end


# One remembered argument digest (direct-mapped by an FNV-1a hash of the arguments).
cdef struct DigestEntry:
    uint64_t tag
    Py_ssize_t len
    char* raw
    char hex[16]


# Keyed BLAKE2b-64 of the arguments as sent: the state after the key block, and a cache.
cdef struct Digests:
    uint64_t keyed[8]
    DigestEntry* cache


# A batch handed to the writer thread: header, then payload (count, rows, lines), then details.
cdef struct Pending:
    Pending* next
    double offset
    Py_ssize_t count
    Py_ssize_t size
    Py_ssize_t dsize


# What the writer thread shares with the loop (under lock) and keeps for itself.
cdef struct WriterState:
    pthread_mutex_t lock
    pthread_cond_t wake
    pthread_cond_t drained      # the queue fell to half its limit (a submitter may be waiting)
    Pending* head
    Pending* tail
    Py_ssize_t queued
    Py_ssize_t limit
    double wait                 # seconds a submitter waits on a full queue before calling the thread stuck
    int waiting                 # submitters waiting on ``drained``
    bint stuck                  # a wait ran out: full batches are dropped until the thread moves again
    double wait_seconds         # submitters' seconds spent waiting, in all
    long long waits
    bint idle                   # the thread waits for a batch (a submit wakes it)
    bint stopping
    long long calls
    long long errors
    long long dropped
    long long pid
    Digests digests
    Out out
    Out scratch
    int fd
    int wake_fd
    bint care
    Py_ssize_t size
    ino_t ino
    char* path
    Py_ssize_t max_file
    Py_ssize_t max_total
    Py_ssize_t chunk            # lines formatted before each write
    Py_ssize_t total
    double retry_at
    double busy_seconds
    PyObject* owner


cdef class TaskWriter:
    cdef WriterState* st
    cdef pthread_t thread
    cdef bint running
    cdef readonly object files
    cdef bytes _path

    cdef void _make_room(self, Py_ssize_t room) noexcept
    cdef int _create(self) noexcept
    cdef void _failed(self, int err, long long rows) noexcept
    cdef void _lost(self, exc, long long rows) noexcept
    cdef void _report(self, Py_ssize_t code) noexcept
