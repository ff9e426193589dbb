"""Real instrument drivers (pyvisa, pyserial): SMUs, switch matrix, multiplexer board."""
