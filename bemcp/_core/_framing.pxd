cdef class Oversized:
    cdef readonly Py_ssize_t size
    cdef readonly bytes head


cdef class Framer:
    cdef readonly Py_ssize_t max_size
    cdef bytearray _buf
    cdef bint _dropping
    cdef Py_ssize_t _dropped
    cdef bytes _head

    cpdef list feed(self, object data)
    cdef _emit(self, list out, object line, Py_ssize_t size)
    cdef _buffer(self, bytes data, Py_ssize_t start)
