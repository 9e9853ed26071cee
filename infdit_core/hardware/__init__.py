"""What the device can do: the float type by device ("auto"), finiteness of a pass, pinned host memory and staging."""
