from ._consts cimport N_STATES


cdef class _Deadline


cdef class Request:
    cdef public object id
    cdef public object method
    cdef public object tool
    cdef public object params
    cdef public double start
    cdef public double end
    cdef public double deadline
    cdef public int state
    cdef public object task
    cdef public object thread
    cdef public bint armed
    cdef public object slot
    cdef public object on_outcome
    cdef public object detail
    cdef public Py_ssize_t size
    cdef public object line
    cdef public object batch
    cdef public object reply
    cdef _Deadline _entry      # its place in the deadline heap while armed


cdef class _Deadline:
    cdef double at
    cdef Request req           # None once the request has ended: a tombstone pins nothing


cdef class InFlightTable:
    cdef public object loop
    cdef public dict requests
    cdef public object on_expire
    cdef Py_ssize_t _counts[N_STATES]
    cdef list _heap
    cdef Py_ssize_t _stale
    cdef object _timer
    cdef double _timer_at

    cpdef Request open(self, object id, object method, object tool, object params)
    cpdef bint close(self, Request req, int state) except -1
    cpdef arm(self, Request req, object timeout)
    cdef _schedule(self, double when)
    cdef _bury(self, Request req)
    cdef _compact(self)


cdef double now() noexcept nogil
