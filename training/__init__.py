"""Training, calibration and evaluation of SQUID (torch)."""
