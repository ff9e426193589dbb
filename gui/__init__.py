"""The lab bench GUI (PyQt6 + pyqtgraph): a front end over the pipeline, session store and
instruments that the CLI uses; it adds viewing, no logic of its own.

- `gui.state`: folds pipeline events (live, or replayed from a session file) into what the panels
  show; Qt-free.
- `gui.worker`: the one long-lived hardware worker thread that owns the crossbar and runs queued
  jobs (connect, pipeline runs, reads, I-V sweeps) with pause / abort.
- `gui.panels`, `gui.widgets`: the views; `gui.main_window`: wiring, coalesced redraws, stall
  meter; `gui.app.main(argv)`: the `xbarlab gui` entry point.
"""
