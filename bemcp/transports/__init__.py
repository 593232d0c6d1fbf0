"""Transports own the file descriptors; the core only ever sees a transport."""
