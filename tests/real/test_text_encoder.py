"""The text_encoder: served FP32 against SentenceTransformer.encode, the INT8 file's bounds, the value guard."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clients import Client, InvalidInputError
from common.files import sha256_file
from common.ort import ort_session
from export import graphs
from models import data, real_data, spec

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
FP32_BOUND = 1e-4  # the bound: relative error against SentenceTransformer.encode


def texts_of(artifacts) -> list[str]:
    return data.load_texts(artifacts, "test")[:16] + list(real_data.QUERIES)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_served_encoder_is_its_file_and_meets_the_gates_against_sentence_transformers(
    triton_real, real_artifacts, real_repo, tokenizer, reference, protocol
):
    """The served cpu file (model.cpu.onnx, chosen at export) answers what that file answers in-process on the same
    batch, and meets the accuracy gates against SentenceTransformer.encode (FP32 within 1e-4: the export checks)."""
    from repository.layout import served_file

    texts = texts_of(real_artifacts)
    want = reference.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    ids, mask = real_data.tokenize(tokenizer, texts)
    url = triton_real.http_url if protocol == "http" else triton_real.grpc_url
    with Client(url, protocol=protocol) as client:
        got = client.text_encoder(ids, mask).values
        one = np.concatenate([client.text_encoder(*real_data.tokenize(tokenizer, [t])).values for t in texts[:4]])
    path = served_file(real_repo, "text_encoder")
    sess = ort_session(path)
    same = sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    alone = np.concatenate(
        [
            sess.run(
                ["embedding"],
                dict(zip(("input_ids", "attention_mask"), real_data.tokenize(tokenizer, [t]), strict=True)),
            )[0]
            for t in texts[:4]
        ]
    )
    assert graphs.relative_error(got, same) <= 1e-5 and graphs.relative_error(one, alone) <= 1e-5
    cos = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, (path.name, cos.min())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    candidate = json.loads(path.with_name(path.name + ".json").read_text()).get("candidate", "fp32")
    if candidate.endswith("fp32"):
        assert graphs.relative_error(got, want) <= FP32_BOUND


def test_export_report_holds_the_sentence_transformers_check(real_artifacts):
    record = json.loads((real_artifacts / "reports" / "export.json").read_text())["models"]["text_encoder"]
    assert record["passed"], record["failures"]
    assert record["verification"]["sentence_transformers"]["embedding"]["rel_err"] <= FP32_BOUND
    assert record["verification"]["guard"]["passed"]


def test_int8_encoder_meets_cosine_and_recall_bounds(real_artifacts, real_repo, tokenizer):
    """The calibration report's figures, and the INT8 file recomputed here on held-out texts."""
    entry = json.loads((real_artifacts / "reports" / "calibration.json").read_text())["models"]["text_encoder"]
    acc = entry["accuracy"]
    assert acc["met"], acc["reason"]
    assert acc["cosine_min"] >= 0.99 and acc["recall_at_k"] >= 0.95
    assert entry["calibration_set"]["split"] == "train" and entry["qdq"]["zero_points_all_zero"]
    assert len(entry["qdq"]["int8_gemms"]) == 18 and len(entry["qdq"]["fp32_gemms"]) == 30  # hidden-state GEMMs FP32
    vdir = spec.version_dir("text_encoder", real_repo)
    fp32, int8 = (
        ort.InferenceSession(str(vdir / f), providers=["CPUExecutionProvider"])
        for f in (spec.ONNX_FP32, spec.ONNX_INT8)
    )
    ids, mask = real_data.tokenize(tokenizer, list(real_data.QUERIES))
    feeds = {"input_ids": ids, "attention_mask": mask}
    a, b = fp32.run(None, feeds)[0], int8.run(None, feeds)[0]
    assert np.min(np.sum(a * b, axis=1)) >= 0.99


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_token_rows_answer_nan_and_leave_batch_mates_alone(triton_real, real_artifacts, tokenizer, protocol):
    """Ids outside the vocabulary, a mask value of 2 and a mask with no token answer the NaN sentinel."""
    texts = texts_of(real_artifacts)[:6]
    ids, mask = real_data.tokenize(tokenizer, texts)
    bad_ids, bad_mask = ids.copy(), mask.copy()
    bad_ids[1, 1] = spec.VOCAB_SIZE
    bad_mask[3, 0] = 2
    bad_mask[4, :] = 0
    url = triton_real.http_url if protocol == "http" else triton_real.grpc_url
    with Client(url, protocol=protocol, validate=False) as client:
        good = client.text_encoder(ids, mask).values
        with pytest.raises(
            InvalidInputError,
            match=r"input 'input_ids' value 30522 is out of range \[0, 30522\) \(batch row 1\); 2 more",
        ):
            client.text_encoder(bad_ids, bad_mask)  # the server's sentinel, named by the client
    with Client(url, protocol=protocol) as client:
        with pytest.raises(InvalidInputError, match="input_ids' value 30522 is out of range"):
            client.text_encoder(bad_ids, mask)  # refused before sending
        with pytest.raises(InvalidInputError, match="attention_mask' of batch row 4 attends no token"):
            client.text_encoder(ids, np.where(np.arange(6)[:, None] == 4, 0, mask))
    mod = PROTOCOLS[protocol]
    c = mod.InferenceServerClient(url)
    try:
        tensors = []
        for name, a in (("input_ids", bad_ids), ("attention_mask", bad_mask)):
            tensors.append(mod.InferInput(name, list(a.shape), "INT64"))
            tensors[-1].set_data_from_numpy(a)
        emb = c.infer("text_encoder", tensors).as_numpy("embedding")
    finally:
        c.close()
    assert np.isnan(emb[[1, 3, 4]]).all()
    keep = [0, 2, 5]
    assert graphs.relative_error(emb[keep], good[keep]) <= 1e-5


def test_the_cpu_file_is_the_fastest_candidate_that_meets_the_gates(real_artifacts, real_repo):
    """calibration.json's "cpu_file": every candidate held to the gates, the served file is the chosen one."""
    from calibration.calibrate import CANDIDATES, TEXT_COSINE_MEAN_GOAL, TEXT_COSINE_MIN_GOAL, TEXT_RECALL_GOAL

    entry = json.loads((real_artifacts / "reports" / "calibration.json").read_text())["models"]["text_encoder"]
    cpu = entry["cpu_file"]
    assert list(cpu["candidates"]) and set(cpu["candidates"]) == set(CANDIDATES)
    for name, c in cpu["candidates"].items():
        met = (
            c["cosine_fp32_mean"] >= TEXT_COSINE_MEAN_GOAL
            and c["cosine_fp32_min"] >= TEXT_COSINE_MIN_GOAL
            and c["recall_at_k"] >= TEXT_RECALL_GOAL
            and c["batch_effect_max_abs"] <= graphs.GUARD_BOUND
        )
        assert c["meets_gates"] == met, name
    assert cpu["candidates"][cpu["chosen"]]["meets_gates"] and cpu["guard"]["passed"]
    fastest = min(c["batch1_p50_ms"] + c["batch8_per_text_ms"] for c in cpu["candidates"].values() if c["meets_gates"])
    chosen = cpu["candidates"][cpu["chosen"]]
    assert chosen["batch1_p50_ms"] + chosen["batch8_per_text_ms"] <= 1.05 * fastest
    path = spec.version_dir("text_encoder", real_repo) / spec.ONNX_CPU
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["candidate"] == cpu["chosen"] and record["onnx_sha256"] == sha256_file(path)
