"""What every explorer page shares: the runs folder, cached reads of the run store, run pickers and notices.

All data comes from `sparsescope.show.runs` (the run store through DuckDB); reads are cached per runs-folder
signature, so a page load never recomputes what an earlier one read and a new run shows up on the next rerun.
"""

from __future__ import annotations

import math
import os

import pandas as pd
import streamlit as st

from sparsescope.record.metrics import Metric
from sparsescope.show import runs as store

FIRST_RUN = ("sparsescope scan --suites prose,random_tokens --sites mlp.hook_post,hook_resid_post "
             "--max-tokens 64")


def root() -> str:
    return os.environ.get("SPARSESCOPE_RUNS") or "runs"


@st.cache_data(show_spinner=False, max_entries=8)
def _catalog(path: str, sig: tuple) -> pd.DataFrame:
    return store.catalog(path)


def catalog() -> pd.DataFrame:
    """Every run folder with status and problem (None when readable)."""
    return _catalog(root(), store.signature(root()))


@st.cache_data(show_spinner=False, max_entries=128)
def _table(path: str, sig: tuple, name: str, run_ids: tuple, columns: str, where: str, order: str) -> pd.DataFrame:
    return store.load(path, name, run_ids, columns, where, order)


def table(name: str, run_ids, columns: str = "*", where: str = "", order: str = "") -> pd.DataFrame:
    """Rows of table `name` of the given complete runs (empty frame where none has it); read only the columns and
    rows a chart needs (`columns`, `where`): every read is cached until the runs folder changes."""
    return _table(root(), store.signature(root()), name, tuple(run_ids), columns, where, order)


@st.cache_data(show_spinner=False, max_entries=128)
def _sql(path: str, sig: tuple, name: str, run_ids: tuple, select: str) -> pd.DataFrame:
    return store.sql(path, name, run_ids, select)


def sql(name: str, run_ids, select: str) -> pd.DataFrame:
    """An aggregation computed in DuckDB over the chosen runs' rows of `name` (the view `t`), cached like `table`."""
    return _sql(root(), store.signature(root()), name, tuple(run_ids), select)


@st.cache_resource(show_spinner=False, max_entries=256)
def _figure(path: str, sig: tuple, name: str, args: tuple, _build):
    return _build(*args)


def cached(build, *args):
    """`build(*args)` (a figure or a derived table), built once per runs-folder signature and shared by every
    session and rerun.

    Building plotly figures costs more than reading the tables they show; `build` reads its tables through
    `table`/`sql` from hashable `args` (run ids, site, metric), so a page switch only serialises the figure.
    Callers never mutate what it returns.
    """
    name = f"{build.__code__.co_filename}:{build.__qualname__}"
    return _figure(root(), store.signature(root()), name, args, build)


def quote(text: str) -> str:
    """A SQL string literal."""
    return store.sql_str(text)


@st.cache_data(show_spinner=False, max_entries=64)
def _manifest(path: str, sig: tuple, run_id: str) -> dict:
    return store.manifest(path, run_id)


def manifest(run_id: str) -> dict:
    return _manifest(root(), store.signature(root()), run_id)


def complete(kind: str | None = None, table_name: str | None = None) -> pd.DataFrame:
    """Readable runs, optionally of one kind and holding one table, newest first."""
    c = catalog()
    c = c[c["problem"].isna()]
    if kind:
        c = c[c["kind"] == kind]
    if table_name:
        c = c[c["tables"].map(lambda t: table_name in t).astype(bool)]
    return c.iloc[::-1]


def label(runs: pd.DataFrame, run_id: str) -> str:
    model = runs.set_index("run_id").at[run_id, "model"]
    return f"{run_id} · {model}"


def pick(kind: str, what: str, key: str, multi: bool = False, table_name: str | None = None,
         model: str | None = None) -> list[str]:
    """A run picker over complete runs of `kind` (newest first, newest preselected); [] when there is none."""
    runs = complete(kind, table_name)
    if model is not None:
        runs = runs[runs["model"] == model]
    if runs.empty:
        return []
    ids = list(runs["run_id"])
    fmt = lambda i: label(runs, i)  # noqa: E731
    if multi:
        return st.multiselect(what, ids, default=ids[:1], format_func=fmt, key=key)
    return [st.selectbox(what, ids, format_func=fmt, key=key)]


def models_of(run_ids) -> list[str]:
    c = catalog().set_index("run_id")
    return list(dict.fromkeys(c.loc[list(run_ids), "model"]))


def different_models(run_ids) -> bool:
    """Warn, and say so, when the chosen runs are of different models (shown side by side, never overlaid)."""
    models = models_of(run_ids)
    if len(models) > 1:
        st.warning(f"These runs are of different models ({', '.join(map(str, models))}): they are shown side by "
                   "side, not overlaid or differenced, because their layers and widths do not correspond.")
        return True
    return False


def what(text: str) -> None:
    """The one-line 'what this shows' under every chart."""
    st.caption(f"**What this shows:** {text}")


def chart(fig, text: str, key: str | None = None) -> None:
    st.plotly_chart(fig, width="stretch", key=key)
    what(text)


def frame(df: pd.DataFrame, key: str | None = None, **kw) -> None:
    """A sortable table."""
    st.dataframe(df, width="stretch", hide_index=True, key=key, **kw)


def needs(command: str, data: str) -> None:
    """Say which command stores the data a section needs."""
    st.info(f"No {data} in `{root()}` yet. Produce it with:\n\n```\n{command}\n```")


def columns_for(run_ids: list[str]):
    """One column per run when a few are chosen (side by side), else a vertical stack."""
    return st.columns(len(run_ids)) if 1 < len(run_ids) <= 3 else [st.container() for _ in run_ids]


def metric_names(name: str, run_ids) -> list[str]:
    """'hoyer', 'near_zero_frac@0.1', ... recorded in table `name` of these runs (metric, threshold columns)."""
    pairs = sql(name, run_ids, "SELECT DISTINCT metric, threshold FROM t ORDER BY metric, threshold NULLS FIRST")
    return [Metric(m, float(t)).label for m, t in pairs.itertuples(index=False)]


def metric_where(label: str) -> str:
    """The SQL filter on (metric, threshold) of a label such as 'near_zero_frac@0.1' or 'hoyer'."""
    m = Metric.parse(label)
    at = "threshold IS NULL" if math.isnan(m.threshold) else f"abs(threshold - {m.threshold!r}) < 1e-9"
    return f"(metric = {quote(m.name)} AND {at})"


def ids(kind: str, table_name: str, model: str | None = None) -> list[str]:
    """Complete runs of `kind` holding `table_name` (of `model` if given), newest first."""
    runs = complete(kind, table_name)
    return list(runs.loc[runs["model"] == model, "run_id"] if model is not None else runs["run_id"])


def energy(uJ: float) -> str:
    """'69.5 mJ' / '812 µJ' / '3.1 nJ': an energy in µJ in a readable unit."""
    for unit, scale in (("J", 1e6), ("mJ", 1e3), ("µJ", 1.0), ("nJ", 1e-3)):
        if abs(uJ) >= scale:
            return f"{uJ / scale:.4g} {unit}"
    return f"{uJ * 1e6:.4g} pJ"
