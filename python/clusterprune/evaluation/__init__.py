"""Speech data, word error rate, sweeps."""
