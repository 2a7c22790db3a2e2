"""A seeded, simulated network that drives shoal's sans-IO state machines in virtual time."""
