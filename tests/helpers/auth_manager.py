"""An Airflow auth manager for the quotes view's tests: SimpleAuthManager, with users who may not read one DAG.

SimpleAuthManager's roles all read every DAG, so it cannot express "signed in, but not allowed to see
this pipeline". This subclass uses Airflow's own extension point (``[core] auth_manager``) to add that,
and nothing else: logins, tokens and every other permission are SimpleAuthManager's.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

CLASS_PATH = f"{__name__}.PipelineHidingAuthManager"
# user name → the DAG that user may not read (any part of it)
DENIED_DAG = {"no-producer": "quotes_producer", "no-indexer": "quotes_indexer"}


class PipelineHidingAuthManager(SimpleAuthManager):
    """SimpleAuthManager, except that each user in :data:`DENIED_DAG` may not read that one DAG."""

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        """Denied for the named user's DAG; SimpleAuthManager's answer otherwise."""
        if details is not None and DENIED_DAG.get(user.get_name()) == details.id:
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
