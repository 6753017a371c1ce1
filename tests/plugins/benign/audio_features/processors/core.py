import math
from dataclasses import dataclass

import librosa
import numpy as np
import pandas as pd
import soundfile as sf

from shared.plugins import open_asset


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    n_mels: int = 64
    max_seconds: float = 120.0


def _suffix(url: str) -> str:
    tail = url.rsplit("/", 1)[-1]
    return "." + tail.rsplit(".", 1)[-1] if "." in tail else ".wav"


class AudioFeatures:
    def __init__(self, config: AudioConfig, **kwargs):
        self.config = config

    def _features(self, url: str):
        cfg = self.config
        with open_asset(url, suffix=_suffix(url)) as path:
            info = sf.info(path)
            y, sr = librosa.load(path, sr=cfg.sample_rate, mono=True, duration=cfg.max_seconds)
        if y.size == 0:
            return [0.0] * (2 * cfg.n_mels), 0.0, 0.0
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=cfg.n_mels)
        logmel = librosa.power_to_db(mel, ref=np.max)
        vector = np.concatenate([logmel.mean(axis=1), logmel.std(axis=1)])
        tempo, _ = librosa.beat.beat_track(y=y, sr=sr)
        tempo = float(np.atleast_1d(tempo)[0])
        return vector.astype(float).tolist(), float(info.duration), tempo if math.isfinite(tempo) else 0.0

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [self._features(url) for url in batch["data"].tolist()]
        batch["audio_embedding"] = [r[0] for r in rows]
        batch["duration_s"] = [r[1] for r in rows]
        batch["tempo_bpm"] = [r[2] for r in rows]
        return batch
