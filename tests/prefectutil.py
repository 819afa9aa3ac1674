"""Small helpers shared by the flow tests."""
from __future__ import annotations

import asyncio


def latest_artifact(key: str) -> str:
    """The data of the newest Prefect artifact with `key` (e.g. the retrain flow's "retrain-report")."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                               sort=ArtifactSort.CREATED_DESC, limit=1)

    return asyncio.run(read())[0].data
