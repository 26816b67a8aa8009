"""Python client for the Patchbank scoring service (sync and async) and the ``score`` command line.

Needs only httpx, numpy, pillow, tifffile, tqdm and pydantic; it never imports the engine.

    from patchbank_client import PatchbankClient

    with PatchbankClient("http://inspect-01:8000", api_key="...") as client:
        result = client.score("puck", "000.png", "000.tiff", map="array")
        print(result.image_score, result.is_anomalous, result.map_array().shape)
"""

from patchbank_client.client import (
    AnomalyMap,
    APIError,
    AsyncPatchbankClient,
    BadRequest,
    CategoryInfo,
    Conflict,
    ConnectionFailed,
    MapFormat,
    NotFound,
    PatchbankClient,
    PatchbankClientError,
    PayloadTooLarge,
    Peak,
    PointCloudInput,
    PointScores,
    Region,
    RgbInput,
    ScoreResult,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
    XyzInput,
)

__all__ = [
    "APIError",
    "AnomalyMap",
    "AsyncPatchbankClient",
    "BadRequest",
    "CategoryInfo",
    "Conflict",
    "ConnectionFailed",
    "MapFormat",
    "NotFound",
    "PatchbankClient",
    "PatchbankClientError",
    "PayloadTooLarge",
    "Peak",
    "PointCloudInput",
    "PointScores",
    "Region",
    "RgbInput",
    "ScoreResult",
    "ServiceUnavailable",
    "Unauthorized",
    "UnexpectedResponse",
    "XyzInput",
]
