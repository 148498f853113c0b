"""The user's model: factories, checkpoints, and how labels map to outputs."""

from __future__ import annotations

import pytest

from bnkit.errors import StudyError
from bnkit.study.models.user import output_labels


def test_labels_that_index_the_outputs_are_kept() -> None:
    assert output_labels([0, 1], 2, checkpoint=True, spec="m:f") == {0: 0, 1: 1}
    assert output_labels([3, 7], 10, checkpoint=True, spec="m:f") == {3: 3, 7: 7}


def test_other_labels_are_mapped_in_sorted_order_when_the_study_trains_the_model() -> None:
    assert output_labels([7, 3, 7], 2, checkpoint=False, spec="m:f") == {3: 0, 7: 1}


def test_with_a_checkpoint_other_labels_are_refused_clearly() -> None:
    with pytest.raises(StudyError, match=r"labels \[3, 7\] are not indices of the 2 outputs"):
        output_labels([3, 7], 2, checkpoint=True, spec="m:f")


def test_too_few_outputs_for_the_classes() -> None:
    with pytest.raises(StudyError, match="has 2 outputs, but the data has 3 classes"):
        output_labels([4, 5, 6], 2, checkpoint=False, spec="m:f")
