"""One module per ``regcollide`` command (see ``regcollide/cli.py``)."""
