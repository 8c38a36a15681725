"""IPython startup file of the emulated Colab runtime (copied to $IPYTHONDIR/profile_default/startup/):
imports google.colab when the kernel starts, as Colab's kernel does."""
import google.colab  # noqa: F401
