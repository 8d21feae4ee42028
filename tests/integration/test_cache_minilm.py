"""The real semantic-cache embedder: paraphrase-MiniLM-L3-v2 int8 from PyPI packages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tiergate.cache import SemanticCache, load_minilm_embedder
from tiergate.models.onnx import OnnxSentenceEmbedder
from tiergate.types import Result

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnnxSentenceEmbedder]:
    yield load_minilm_embedder(tmp_path_factory.mktemp("minilm"))


def test_prepared_model_is_int8_and_reused(
    embedder: OnnxSentenceEmbedder, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = list(Path(embedder._model_path).parent.glob("*-int8.onnx"))
    assert len(files) == 1 and files[0].stat().st_size < 25_000_000  # fp32 is 69 MB
    again = load_minilm_embedder(files[0].parent)
    assert again.version == embedder.version and embedder.dim == 384


def test_paraphrases_are_closer_than_unrelated_reviews(embedder: OnnxSentenceEmbedder) -> None:
    base = "The plot is thin and the jokes fall flat, but the cast is likeable enough."
    variants = [
        "the plot is thin and the jokes fall flat but the cast is likeable enough",  # casing, punct.
        "The plot is thin and the jokes fall flat, but the cast is likable enough.",  # spelling
        "The cast is likeable enough, but the plot is thin and the jokes fall flat.",  # clauses
    ]
    unrelated = [
        "A gorgeous, moving film; one of the year's best.",
        "The cinematography of the desert scenes is breathtaking.",
    ]
    vecs = embedder.embed([base, *variants, *unrelated])
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    sims = vecs[1:] @ vecs[0]
    assert sims[0] > 0.98  # the vocabulary is uncased
    assert min(sims[:3]) > 0.85  # 0.892 for the weakest pair with onnxruntime 1.32 int8
    assert max(sims[3:]) < 0.6


async def test_semantic_cache_with_the_real_embedder(embedder: OnnxSentenceEmbedder) -> None:
    cache = SemanticCache(embedder, threshold=0.95)
    result = Result("negative", 0.8, "fast", ("fast",), None, None, 1.0, 1e-6, "f1", "c1")
    assert await cache.put("The plot is thin and the jokes fall flat.", result)
    hit = (await cache.lookup("the plot is thin and the jokes fall flat")).result
    assert hit is not None and hit.cache == "semantic" and hit.output == "negative"
    assert (await cache.lookup("A gorgeous, moving film.")).result is None
    await cache.aclose()
