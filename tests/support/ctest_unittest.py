"""unittest.main() for the Python tests that ctest runs: exits 1 on any failure or error, 77 (the
SKIP_RETURN_CODE that tests/CMakeLists.txt's tessera_add_python_test sets) when some test was
skipped and none failed, so ctest reports the run as skipped rather than passed, and 0 otherwise.
"""
import faulthandler
import sys
import unittest

SKIP_EXIT = 77


def main():
    # A crash in native code (a kernel, the op library) prints the Python stack of every thread.
    faulthandler.enable()
    result = unittest.main(verbosity=2, exit=False).result
    if result.failures or result.errors or result.unexpectedSuccesses:
        sys.exit(1)
    sys.exit(SKIP_EXIT if result.skipped else 0)
