"""Run a DAG of dags/ with dag.test() and read what its tasks returned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DAGS = Path(__file__).resolve().parents[2] / "dags"


def load_dag(dag_id: str):
    """The DAG ``dag_id`` parsed from its own file."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def returns(dag_run) -> dict[str, list[Any]]:
    """``{task_id: [return values of its (mapped) instances]}`` of a finished run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    out: dict[str, list[Any]] = {}
    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
            .filter(XComModel.key == "return_value")
            .order_by(XComModel.map_index)
            .all()
        )
        for row in rows:
            out.setdefault(row.task_id, []).append(row.value)
    return out


def task_states(dag_run) -> dict[str, str]:
    """``{task_id: state}`` (last mapped instance wins) of a finished run."""
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
