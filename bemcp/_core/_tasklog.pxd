# The server's Dispatcher.take_finished records: the same 40 bytes as _dispatch.pxd's
# FinishedRow (a test reads both twins' records with bemcp.logs.sink.RECORD).
cdef struct Row:
    double start
    double end
    long long state
    long long size
    long long sent


# The lines being written: one growing C buffer.
cdef struct Out:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


# Where a request line's id, params.name and params.arguments values lie (-1: absent).
cdef struct Spans:
    Py_ssize_t id_start, id_end, name_start, name_end, args_start, args_end
