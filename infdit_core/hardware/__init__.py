"""What the device can do: one record per kind of device (devices.py), the float type by device ("auto"),
finiteness of a pass, pinned host memory and staging."""
