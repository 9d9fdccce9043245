"""The error hierarchy: every class the library raises on purpose is a JobWorkerError, listed in
ALL_ERRORS, and drawn in the module docstring's tree. (The gRPC code mapping is tested with the API.)"""

import inspect
import re

import pytest

from jobworkerd import errors
from jobworkerd.errors import ALL_ERRORS, JobWorkerError, StartFailed


def test_all_errors_is_not_empty_and_has_no_duplicates():
    assert ALL_ERRORS
    assert len(set(ALL_ERRORS)) == len(ALL_ERRORS)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_a_jobworker_error(cls):
    assert issubclass(cls, JobWorkerError) and cls is not JobWorkerError


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_in_the_docstring_tree(cls):
    tree_names = re.findall(r"[├└]── (\w+)", errors.__doc__)
    assert cls.__name__ in tree_names


def test_the_docstring_tree_draws_the_real_hierarchy():
    """Indentation in the tree is inheritance: each entry's parent is the nearest entry drawn above it
    one level less indented (the root, JobWorkerError, at level 0)."""
    parents = {0: JobWorkerError}
    seen = []
    first_column = None
    for line in errors.__doc__.splitlines():
        match = re.search(r"[├└]── (\w+)", line)
        if not match:
            continue
        column = match.start()
        first_column = column if first_column is None else first_column
        level = (column - first_column) // 4 + 1
        cls = getattr(errors, match.group(1))
        assert cls.__bases__ == (parents[level - 1],), f"{cls.__name__} is drawn under {parents[level - 1].__name__}"
        parents[level] = cls
        seen.append(cls)
    assert set(seen) == set(ALL_ERRORS)


def test_every_jobworker_error_subclass_in_the_module_is_listed():
    defined = {
        obj for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, JobWorkerError) and obj is not JobWorkerError and obj.__module__ == errors.__name__
    }
    assert defined == set(ALL_ERRORS)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_message_is_kept(cls):
    error = cls("something a person can act on")
    assert error.message == str(error) == "something a person can act on"


def test_start_failed_carries_step_and_errno():
    error = StartFailed("cannot execute program '/x': Permission denied (EACCES)", step="exec", errno=13)
    assert (error.step, error.errno) == ("exec", 13)
    assert isinstance(error, errors.FailedPrecondition)
