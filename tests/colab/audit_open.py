"""Loaded by a .pth file in the emulated runtime's environment, so it runs first in every Python process there
(the kernel, and pip under %pip): with $COLAB_OPEN_LOG set, logs the absolute path of every file opened to
$COLAB_OPEN_LOG/<pid>.log (an audit hook on "open"), for the test to check where the notebooks read and write."""
import os
import sys


def _install(folder):
    # open for the process's life, and before the hook, so not logged itself
    log = open(os.path.join(folder, f"{os.getpid()}.log"), "a", buffering=1)  # noqa: SIM115

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            log.write(os.path.abspath(path) + "\n")

    sys.addaudithook(hook)


if os.environ.get("COLAB_OPEN_LOG"):
    _install(os.environ["COLAB_OPEN_LOG"])
