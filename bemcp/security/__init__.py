"""What commands may do: the kernel-enforced sandbox (``sandbox``) and its exec helper.

Imported only when ``--sandbox`` is asked for: nothing here is on the plain start path.
"""
