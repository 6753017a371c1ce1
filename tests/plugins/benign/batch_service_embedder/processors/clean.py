import re
import unicodedata

import pandas as pd

WHITESPACE = re.compile(r"\s+")
CONTROL = {"Cc", "Cf"}


def clean(text: str, lowercase: bool = False) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in CONTROL or ch in "\n\t")
    text = WHITESPACE.sub(" ", text).strip()
    return text.lower() if lowercase else text


class CleanText:
    def __init__(self, config, **kwargs):
        self.lowercase = bool(config.get("lowercase", False))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        cleaned = [clean(str(t), self.lowercase) for t in batch["data"].fillna("").tolist()]
        batch["clean_text"] = cleaned
        batch["word_count"] = [len(t.split()) for t in cleaned]
        return batch
