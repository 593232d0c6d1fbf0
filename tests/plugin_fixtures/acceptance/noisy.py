"""Prints everywhere: at import, from a child process, in setup and in its tool."""

import os
import subprocess
import sys

print("noisy: print at import")
sys.stdout.write("noisy: sys.stdout.write at import\n")
os.write(1, b"noisy: os.write(1) at import\n")
subprocess.run([sys.executable, "-c", "print('noisy: child process at import')"], check=True)


def setup(server):
    print("noisy: print in setup")

    @server.tool
    def noisy_shout(word: str = "hello") -> str:
        """Prints to stdout and fd 1, then answers."""
        print(f"noisy: print in tool {word}")
        sys.stdout.flush()
        os.write(1, b"noisy: os.write(1) in tool\n")
        return f"shouted {word}"


print("noisy: buffered on sys.__stdout__ at import", file=sys.__stdout__)
