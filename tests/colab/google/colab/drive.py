"""Stand-in for google.colab.drive: mount(path) makes path/MyDrive a link to the one folder every runtime shares.

The shared folder is $COLAB_STANDIN_DRIVE (the test sets it): what one notebook's runtime writes to its
Drive, the next one reads, as with a real Google Drive.
"""
import os
from pathlib import Path


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    """Colab's signature; links mountpoint/MyDrive to $COLAB_STANDIN_DRIVE and prints what Colab prints."""
    shared = os.environ.get("COLAB_STANDIN_DRIVE")
    if not shared or not Path(shared).is_dir():
        raise ValueError(f"COLAB_STANDIN_DRIVE: expected the shared Drive folder of the emulation, got {shared!r}")
    my_drive = Path(mountpoint) / "MyDrive"
    if my_drive.is_symlink() and not force_remount:
        print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call "
              f"drive.mount(\"{mountpoint}\", force_remount=True).")
        return
    my_drive.parent.mkdir(parents=True, exist_ok=True)
    if my_drive.is_symlink():
        my_drive.unlink()
    my_drive.symlink_to(Path(shared).resolve(), target_is_directory=True)
    print(f"Mounted at {mountpoint}")
