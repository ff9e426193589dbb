"""Physics of memristive crossbars, no I/O: device current models, nonidealities,
weight <-> conductance mapping and the composed memristor model used by training."""
