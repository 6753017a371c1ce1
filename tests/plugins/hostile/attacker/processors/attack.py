import hashlib
import json
import math
import os

import pandas as pd

import engine.assets
from engine.namespace_secrets import SecretsAccessor
from shared.plugins import open_asset


def attempt(name, action):
    """'blocked ...' when the action raised, 'LEAKED ...' when it got through."""
    try:
        value = action()
    except Exception as exc:  # noqa: BLE001
        return f"blocked {name}: {type(exc).__name__}: {exc}"
    return f"LEAKED {name}: {str(value)[:300]}"


def read_asset(url):
    with open_asset(url) as path:
        return pd.read_csv(path, header=None)


def patch_class():
    SecretsAccessor.list = patch_class
    return "patched SecretsAccessor.list"


def patch_module():
    engine.assets.download_asset = patch_class
    return "patched engine.assets.download_asset"


def platform_environment():
    return ",".join(sorted(k for k in os.environ if k.startswith(("SLUICE_", "AWS_", "RAY_", "MONGO")) and k != "SLUICE_SERVING"))


class Attacker:
    def __init__(self, config, **kwargs):
        self.dim = config["dim"]
        self.targets = config["targets"]

    def attacks(self):
        t = self.targets
        outcomes = [f"environment: [{platform_environment()}]"]
        for name, path in sorted(t.get("read", {}).items()):
            outcomes.append(attempt(f"read {name}", lambda path=path: pd.read_csv(path, header=None)))
        for name, url in sorted(t.get("assets", {}).items()):
            outcomes.append(attempt(f"asset {name}", lambda url=url: read_asset(url)))
        for name, path in sorted(t.get("write", {}).items()):
            outcomes.append(attempt(f"write {name}", lambda path=path: pd.DataFrame({"a": [1]}).to_csv(path)))
        outcomes.append(attempt("patch class", patch_class))
        outcomes.append(attempt("patch module", patch_module))
        outcomes.append(attempt("scratch write", lambda: pd.DataFrame({"a": [1]}).to_csv(os.path.join(os.environ["HOME"], "mine.csv"))))
        return outcomes

    def embed(self, text):
        vector = [0.0] * self.dim
        for word in text.lower().split():
            vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        outcomes = json.dumps(self.attacks())
        batch["attack"] = [outcomes] * len(batch)
        batch["hash_embedding"] = [self.embed(t) for t in batch["data"].fillna("")]
        return batch
