"""The tokenizer model: parity with the Hugging Face tokenizer, truncation, and bad texts over HTTP and gRPC."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients import Client, InvalidInputError
from common.triton import load_config
from models import data, real_data, spec

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
LONG = "space adventure with robots " * 200  # ~1,000 tokens: truncated to spec.MAX_TOKENS
_PARAMS = load_config(spec.MODEL_REPOSITORY / "tokenizer" / "config.pbtxt").parameters
BUCKETS = [int(b) for b in _PARAMS["length_buckets"].string_value.split(",")]  # 16, 32, ... 256


def hf_tokenizer(artifacts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(real_data.encoder_dir(artifacts)), local_files_only=True)


def texts_of(artifacts) -> list[str]:
    return data.load_texts(artifacts, "test")[:20] + list(real_data.QUERIES) + ["Amélie (2001). Comedy, Romance", LONG]


def raw_infer(triton, protocol: str, model: str, rows: list[bytes]) -> dict[str, np.ndarray]:
    mod = PROTOCOLS[protocol]
    c = mod.InferenceServerClient(triton.http_url if protocol == "http" else triton.grpc_url)
    try:
        arr = np.array(rows, dtype=object).reshape(-1, 1)
        t = mod.InferInput("text", list(arr.shape), "BYTES")
        t.set_data_from_numpy(arr)
        result = c.infer(model, [t])
        return {o.name: result.as_numpy(o.name) for o in spec.MODELS[model].outputs}
    finally:
        c.close()


def test_packaged_tokenizer_equals_the_hugging_face_tokenizer_of_the_encoder_folder(real_artifacts, tokenizer):
    """`tokenizers` with tokenizer.json (what the served model runs) = transformers' AutoTokenizer, truncated to
    256 tokens as SentenceTransformer does, padded to the longest text of the batch."""
    texts = texts_of(real_artifacts)
    ids, mask = real_data.tokenize(tokenizer, texts)
    hf = hf_tokenizer(real_artifacts)(
        texts, padding=True, truncation=True, max_length=spec.MAX_TOKENS, return_tensors="np"
    )
    np.testing.assert_array_equal(ids, hf["input_ids"])
    np.testing.assert_array_equal(mask, hf["attention_mask"])
    assert ids.shape[1] == spec.MAX_TOKENS  # the long text is truncated, [SEP] kept last
    assert ids[-1, -1] == hf_tokenizer(real_artifacts).sep_token_id


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_served_tokenizer_equals_the_hugging_face_tokenizer(triton_real, real_artifacts, protocol):
    texts = texts_of(real_artifacts)
    hf = hf_tokenizer(real_artifacts)(
        texts, padding=True, truncation=True, max_length=spec.MAX_TOKENS, return_tensors="np"
    )
    got = raw_infer(triton_real, protocol, "tokenizer", [t.encode() for t in texts])
    np.testing.assert_array_equal(got["input_ids"], hf["input_ids"])  # the longest is 256 tokens: the last bucket
    np.testing.assert_array_equal(got["attention_mask"], hf["attention_mask"])
    for text, n in zip(texts[:3], hf["attention_mask"].sum(axis=1), strict=False):  # alone: padded to its bucket
        one = raw_infer(triton_real, protocol, "tokenizer", [text.encode()])
        assert one["input_ids"].shape[1] == next(b for b in BUCKETS if b >= n)
        assert int(one["attention_mask"].sum()) == n and one["attention_mask"][0, :n].all()
        np.testing.assert_array_equal(one["input_ids"][0, :n], hf["input_ids"][texts.index(text), :n])
        assert not one["input_ids"][0, n:].any()  # [PAD] is id 0


BAD = {
    "empty": (b"", "text of row 0 is empty"),
    "whitespace": (b"  \n ", "text of row 0 is empty"),
    "not utf-8": (b"caf\xe9 au lait", "text of row 0 is not valid UTF-8 (byte 3"),
    "too long": (
        b"x" * (spec.MAX_TEXT_BYTES + 1),
        f"text of row 0 has {spec.MAX_TEXT_BYTES + 1} bytes, more than max_text_bytes={spec.MAX_TEXT_BYTES}",
    ),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["tokenizer", "search"])
@pytest.mark.parametrize("case", BAD)
def test_bad_text_answers_a_named_invalid_argument_error(triton_real, protocol, model, case):
    text, message = BAD[case]
    with pytest.raises(InferenceServerException) as exc:
        raw_infer(triton_real, protocol, model, [b"a good text", text][1:])
    assert f"tokenizer: {message}" in exc.value.message()
    assert str(exc.value.status()).removeprefix("StatusCode.") in ("INVALID_ARGUMENT", "400")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_text_does_not_disturb_its_batch_mates(triton_real, real_artifacts, protocol):
    """Eight requests released together (one with non-UTF-8 bytes): the bad one fails, the others answer what they
    answer alone."""
    texts = [t.encode() for t in real_data.QUERIES[:7]]
    alone = [raw_infer(triton_real, protocol, "search", [t]) for t in texts]
    rows = texts[:3] + [b"\xff\xfe broken"] + texts[3:]
    barrier = threading.Barrier(len(rows))

    def one(row: bytes):
        barrier.wait(timeout=30)
        try:
            return raw_infer(triton_real, protocol, "search", [row])
        except InferenceServerException as exc:
            return exc

    with cf.ThreadPoolExecutor(len(rows)) as pool:
        got = list(pool.map(one, rows))
    assert isinstance(got[3], InferenceServerException) and "not valid UTF-8" in got[3].message()
    for want, have in zip(alone, got[:3] + got[4:], strict=True):
        np.testing.assert_array_equal(have["ids"], want["ids"])
        np.testing.assert_allclose(have["scores"], want["scores"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clients_refuse_bad_texts_before_sending_and_name_the_servers_refusal(triton_real, protocol):
    url = triton_real.http_url if protocol == "http" else triton_real.grpc_url
    with Client(url, protocol=protocol, retries=0) as client:
        for text, message in BAD.values():
            with pytest.raises(
                InvalidInputError, match="in ensemble 'search', tokenizer: " + message.replace("(", r"\(")
            ):
                client.search([text])
    with Client(url, protocol=protocol, retries=0, validate=False) as client:
        with pytest.raises(InvalidInputError, match="tokenizer: text of row 1 is empty"):
            client.search(["fine", ""])
        assert client.search("fine").ids.shape == (1, spec.TOP_K)
