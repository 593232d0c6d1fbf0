from ._dispatch cimport Dispatcher


cdef class ReaderProtocol:
    cdef public Dispatcher dispatcher
    cdef public object on_close
    cdef public object transport


cdef class WriterProtocol:
    cdef public ReaderProtocol reader
    cdef public object on_close
    cdef public object transport
