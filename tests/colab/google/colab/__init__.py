"""A test double for Google Colab's `google.colab` package, a service these machines cannot reach.

The Colab emulation (tests/test_colab.py) copies this package into each fresh runtime's environment and
imports it when the kernel starts, as Colab does, so `"google.colab" in sys.modules` holds and the
notebooks take their Colab path. Only what ddpm_lib uses is here: `drive.mount`.
"""
from . import drive

__all__ = ["drive"]
