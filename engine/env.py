"""The `SLUICE_*` environment variables engine code reads, in one place.

Engine code runs in Ray workers and sandbox hosts whose environment the platform sets (engine must
not import `infra.settings`), so the variables are read afresh on every `engine_env()` call rather
than once at import. Empty values mean unset: callers fall back with `or`.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["EngineEnv", "engine_env"]


class EngineEnv(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    s3_endpoint_url: str = ""  # MinIO and friends; unset: AWS
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_region: str = ""
    model_cache: str = ""  # where workers materialise deployed model folders
    data_dir: str = ""  # the platform's data folder (exported ONNX encoders go under models/onnx)


def engine_env() -> EngineEnv:
    """The variables as the process environment holds them now."""
    return EngineEnv()
