"""Wire-level emulators of the instruments, all backed by one simulated chip."""
