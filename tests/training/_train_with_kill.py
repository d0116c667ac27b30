"""``train/regularized.py`` with a callback that SIGKILLs the process right after optimizer step K.

    python tests/training/_train_with_kill.py K [train/regularized.py arguments...]

The kill-and-resume test's fault injection: a deterministic kill point even on a loaded machine, installed
from outside the product through the loop's callbacks.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

from regcollide.training.callbacks import Callback
from regcollide.training.state import TrainState

SCRIPT = Path(__file__).resolve().parents[2] / "train" / "regularized.py"


class KillAfterStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: TrainState, values: dict[str, float]) -> bool:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
        return False


def load_script():
    spec = importlib.util.spec_from_file_location("regularized_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(load_script().main(sys.argv[2:], callbacks=[KillAfterStep(int(sys.argv[1]))]))
