"""Where and how a command runs: devices and torchrun ranks, numeric precision, run directories."""
