"""Which of the form's actions are enabled: one engine job at a time, and its own button cancels it.

Train, Retrain, Resume, Segment and Suggest each start an engine process on the same device; two at once
would compete for the GPU (and a Suggest landing during a Segment would move the input under the result).
So while one runs, its button becomes its Cancel and the other four wait. Plain Python, tested with pytest;
the widget's ``updateButtons`` applies it.
"""

from dataclasses import dataclass
from typing import Dict, Optional

#: The kinds of engine job (the button that starts each).
TRAIN, SEGMENT, SUGGEST = "train", "segment", "suggest"
ACTIONS = ("train", "retrain", "resume", "segment", "suggest", "edit", "use_as_label")


@dataclass
class FormState:
    running: Optional[str] = None  # the kind of the engine job that runs (TRAIN for Retrain and Resume too)
    ready_to_train: bool = False  # CaseTable.readiness()
    has_model: bool = False
    resumable: bool = False
    has_input: bool = False
    has_output: bool = False
    has_unlabeled: bool = False


def enabled_actions(state: FormState) -> Dict[str, bool]:
    """Each action of :data:`ACTIONS` -> whether its button is enabled (a running job's button cancels it)."""
    idle = state.running is None
    return {
        "train": state.running == TRAIN or (idle and state.ready_to_train),
        "retrain": idle and state.ready_to_train and state.has_model,
        "resume": idle and state.resumable,
        "segment": state.running == SEGMENT or (idle and state.has_input and state.has_model),
        "suggest": state.running == SUGGEST or (idle and state.has_model and state.has_unlabeled),
        "edit": state.has_output,
        "use_as_label": state.has_input and state.has_output,
    }
