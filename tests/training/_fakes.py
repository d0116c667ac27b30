"""A one-process stand-in for the part of ``accelerate.Accelerator`` the run-folder and state helpers use."""

from __future__ import annotations

import torch


class FakeAccelerator:
    is_main_process = True
    process_index = 0
    num_processes = 1
    device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        pass

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def log(self, values, step=None) -> None:
        pass
