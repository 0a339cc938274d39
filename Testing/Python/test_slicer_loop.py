"""The annotator's loop, proven on random sequences of user actions (``slicer_loop_model``): after every
step, (a) nothing the user drew or edited was changed or removed by the module, (b) every labeled case
trains on exactly the label its user confirmed, on its own volume, (c) a result is attached only to the
volume it was computed from, (d) the case table survives save -> load, (e) at most one engine job runs.

Fixed seeds reproduce a failure (the message names the seed and step); ``SEMISUPSEG_SOAK_STEPS`` runs a
longer walk (e.g. 100000), ``SEMISUPSEG_SOAK_SEED`` other seeds."""

import os
import random

import pytest
from slicer_loop_model import Loop

STEPS = int(os.environ.get("SEMISUPSEG_SOAK_STEPS", "0")) or 40000
WALK = 200  # steps per walk: a walk starts from an empty scene
FIRST_SEED = int(os.environ.get("SEMISUPSEG_SOAK_SEED", "0"))


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + 4))
def test_random_user_actions_keep_the_invariants(seed):
    rng = random.Random(seed)
    done, counts = 0, {}
    while done < STEPS // 4:
        loop = Loop(random.Random(rng.random()))
        for step in range(WALK):
            try:
                action = loop.step()
            except AssertionError as e:
                raise AssertionError(f"seed {seed}, walk step {step} ({loop.rng}): {e}") from e
            counts[action] = counts.get(action, 0) + 1
        done += WALK
    assert counts.get("use_as_label", 0) > 10 and counts.get("finish_job", 0) > 10  # the walk reaches the loop
