"""`accelerate launch -m tests.ppo_crash_in_step_3 ppo --config ...`: the ppo stage, dying in its third update.

A helper for tests/test_distributed.py (not a test module): every rank exits as a killed process
would, after checkpoint-2 is written.
"""

import os
import sys

from pipeline.cli import main
from pipeline.ppo.trainer import PPOTrainer

learn = PPOTrainer.learn


def crash_in_step_3(self, rollout):
    if self.step == 2:
        os._exit(1)
    return learn(self, rollout)


PPOTrainer.learn = crash_in_step_3
sys.exit(main())
