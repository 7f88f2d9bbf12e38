"""Arms behind one interface (ArmDriver), the safety shield around every one, and the simulated arm."""
