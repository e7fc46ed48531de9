"""The layout refactor changed no number: scan, report, spike, weights and compare tables equal the references
written by `tests/data/make_reference.py` with the code before the refactor (commit 5e81b50), and so does what the
commands print (run ids, paths and seconds masked). `scan.ladder_means` was added when the scan began storing its
ladder bands (issue 16, for the explorer); its reference was written by that change's code."""

import sys
from pathlib import Path

import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_reference import tables, tiny_model_dir  # noqa: E402

REFERENCES = sorted((DATA / "reference").glob("*.parquet"))


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    # the directory name is the tables' `model` column
    return tables(tiny_model_dir(tmp_path_factory.mktemp("before-after") / "model"))


def test_the_same_tables_are_written(current):
    assert sorted(set(current) - {"stdout"}) == [p.stem for p in REFERENCES]


def test_the_commands_print_the_same(current):
    assert current["stdout"] == (DATA / "reference" / "stdout.txt").read_text()


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.stem)
def test_table_equals_reference(current, path):
    # float32 model arithmetic may differ in the last bits with the thread count; anything larger is a change
    pd.testing.assert_frame_equal(current[path.stem], pd.read_parquet(path), check_exact=False, rtol=1e-5, atol=1e-8)
