# The C side of _consts.py (tests/test_twins.py checks that both say the same).

cdef enum:
    STATE_RUNNING = 0
    STATE_OK = 1
    STATE_ERROR = 2
    STATE_TIMED_OUT = 3
    STATE_CANCELLED = 4
    STATE_KILLED = 5
    STATE_REJECTED = 6
    N_STATES = 7
    RECENT = 64
    HEAD_SIZE = 4096


# A finished tool call: FINISHED_ROW's 40 bytes.
ctypedef struct FinishedRow:
    double start
    double end
    long long state     # a STATE_*
    long long size      # bytes in: the request line with its newline
    long long sent      # bytes out; -1: the outcome went to the caller's callback
