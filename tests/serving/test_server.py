"""Every model and both ensembles, served by a real Triton over HTTP and gRPC, against ONNX
Runtime and PyTorch in-process; dynamic batching; bad input; restricted APIs; the cache."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from calibration.calibrate import TEXT_COSINE_MEAN_GOAL, TEXT_COSINE_MIN_GOAL
from common.triton import admin_headers
from models import registry, spec
from repository.layout import served_file

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
RTOL_SERVED = 1e-5  # same ONNX file, same ONNX Runtime: only batch composition may differ
RTOL_TORCH = 1e-4  # the export bound of the export issue


def client(triton, protocol: str):
    if protocol == "http":
        return httpclient.InferenceServerClient(triton.http_url, network_timeout=60.0)
    return grpcclient.InferenceServerClient(triton.grpc_url)


def tensors_of(mod, inputs: dict[str, np.ndarray]) -> list:
    out = []
    for name, array in inputs.items():
        t = mod.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        t.set_data_from_numpy(array)
        out.append(t)
    return out


def infer(triton, protocol: str, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mod = PROTOCOLS[protocol]
    tensors = tensors_of(mod, inputs)
    known = spec.MODELS.get(model)
    outputs = [mod.InferRequestedOutput(t.name) for t in known.outputs] if known else None
    c = client(triton, protocol)
    try:
        timeout = {"client_timeout": 60} if protocol == "grpc" else {}
        result = c.infer(model, tensors, outputs=outputs, **timeout)
        return {t.name: result.as_numpy(t.name) for t in known.outputs}
    finally:
        c.close()


def burst(triton, protocol: str, model: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Every request from its own thread and connection (opened first), released by one barrier: they reach
    Triton within microseconds of each other and meet in its queue."""
    names = [t.name for t in spec.MODELS[model].outputs]
    mod = PROTOCOLS[protocol]
    barrier = threading.Barrier(len(requests))

    def one(i: int) -> dict[str, np.ndarray]:
        c = client(triton, protocol)  # created in its thread: the HTTP client is not thread-safe
        try:
            tensors = tensors_of(mod, requests[i])
            assert c.is_server_live()  # the connection is up before the barrier
            barrier.wait(timeout=30)
            result = c.infer(model, tensors)
            return {n: result.as_numpy(n) for n in names}
        finally:
            c.close()

    with cf.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, range(len(requests))))


def real_inputs(model: str, artifacts: Path, n: int = 8) -> dict[str, np.ndarray]:
    tensors = registry.example_inputs(model, artifacts, "test", n)
    return {t.name: x.numpy() for t, x in zip(spec.MODELS[model].inputs, tensors, strict=True)}


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float, what: str) -> None:
    if got.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got - want).max()) / scale
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def assert_topk_equal(ids: np.ndarray, scores: np.ndarray, want_ids: np.ndarray, want_scores: np.ndarray) -> None:
    """Ids identical except where two catalog items tie on score."""
    assert_close(scores, want_scores, RTOL_TORCH, "top-k scores")
    for row in range(ids.shape[0]):
        differ = ids[row] != want_ids[row]
        if differ.any():
            gaps = np.abs(np.diff(want_scores[row]))
            assert gaps.min() < 1e-6, f"row {row}: ids {ids[row]} != {want_ids[row]} without a tie"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", spec.EXPORTED)
def test_served_model_equals_onnx_runtime_and_pytorch_in_process(triton, repo, artifacts, model, protocol):
    """Against the file the cpu config serves (similarity: INT8 shortlist + FP32 rerank, whose scores are exact
    FP32 dot products: within the FP32 bound of PyTorch, ids equal but at ties)."""
    inputs = real_inputs(model, artifacts)
    served = infer(triton, protocol, model, inputs)
    session = ort.InferenceSession(str(served_file(repo, model)), providers=["CPUExecutionProvider"])
    local = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs), strict=True))
    with torch.no_grad():
        ref = registry.load_model(model, artifacts)(*[torch.from_numpy(a) for a in inputs.values()])
    ref = ref if isinstance(ref, tuple) else (ref,)
    torch_out = {t.name: r.numpy() for t, r in zip(spec.MODELS[model].outputs, ref, strict=True)}
    if model == "similarity":
        assert_topk_equal(served["ids"], served["scores"], local["ids"], local["scores"])
        assert_topk_equal(served["ids"], served["scores"], torch_out["ids"], torch_out["scores"])
        return
    for name, value in served.items():
        assert value.dtype == np.dtype(next(t.dtype for t in spec.MODELS[model].outputs if t.name == name))
        assert_close(value, local[name], RTOL_SERVED, f"{model}.{name} vs ONNX Runtime ({protocol})")
        if model == "text_encoder" and encoder_candidate(repo) not in ("fp32", "fused_fp32"):
            # an INT8 encoder file (calibration's choice): held to its accuracy gates against FP32, per text
            cos = np.sum(value * torch_out[name], axis=1)  # both L2-normalised
            assert cos.min() >= TEXT_COSINE_MIN_GOAL and cos.mean() >= TEXT_COSINE_MEAN_GOAL, cos
            continue
        assert_close(value, torch_out[name], RTOL_TORCH, f"{model}.{name} vs PyTorch ({protocol})")


def encoder_candidate(repo: Path) -> str:
    """Which of calibration's encoder candidates the cpu config's file is (its record), FP32 if it has none."""
    import json

    path = served_file(repo, "text_encoder")
    record = path.with_name(path.name + ".json")
    return json.loads(record.read_text()).get("candidate", "fp32") if record.is_file() else "fp32"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forecast_ensemble_equals_its_steps_run_by_hand(triton, artifacts, protocol):
    window = real_inputs("nhits", artifacts)["window"]
    out = infer(triton, protocol, "forecast", {"window": window})
    nhits = infer(triton, protocol, "nhits", {"window": window})["forecast"]
    reservoir = infer(triton, protocol, "reservoir", {"window": window})["forecast"]
    blend = infer(triton, protocol, "forecast_blend", {"nhits_forecast": nhits, "reservoir_forecast": reservoir})
    assert_close(out["nhits_forecast"], nhits, RTOL_SERVED, "forecast.nhits_forecast")
    assert_close(out["reservoir_forecast"], reservoir, RTOL_SERVED, "forecast.reservoir_forecast")
    assert_close(out["forecast"], blend["forecast"], RTOL_SERVED, "forecast.forecast")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_recommend_ensemble_equals_user_embedding_then_similarity(triton, artifacts, protocol):
    user_id = real_inputs("user_embedding", artifacts)["user_id"]
    out = infer(triton, protocol, "recommend", {"user_id": user_id})
    embedding = infer(triton, protocol, "user_embedding", {"user_id": user_id})["embedding"]
    direct = infer(triton, protocol, "similarity", {"query": embedding})
    assert_topk_equal(out["ids"], out["scores"], direct["ids"], direct["scores"])


def model_stats(triton, model: str, settle_s: float = 5.0) -> tuple[int, int]:
    """(inference_count, execution_count). A native backend reports a batch's statistics after its responses
    have gone out, so a read right after the last answer may lag: read until two reads agree."""
    c = httpclient.InferenceServerClient(triton.http_url)
    try:
        last, deadline = None, time.monotonic() + settle_s
        while True:
            stats = c.get_inference_statistics(model)["model_stats"][0]
            now = int(stats["inference_count"]), int(stats["execution_count"])
            if now == last or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(0.2)
    finally:
        c.close()


def test_dynamic_batching_forms_batches_under_concurrent_load(triton, artifacts):
    window = real_inputs("nhits", artifacts, n=1)["window"]
    before = model_stats(triton, "nhits")
    c = grpcclient.InferenceServerClient(triton.grpc_url)
    t = grpcclient.InferInput("window", list(window.shape), "FP32")
    t.set_data_from_numpy(window)
    try:
        with cf.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda _: c.infer("nhits", [t]).as_numpy("forecast"), range(256)))
    finally:
        c.close()
    assert all(np.allclose(r, results[0], rtol=RTOL_SERVED) for r in results)
    inferences, executions = (a - b for a, b in zip(model_stats(triton, "nhits"), before, strict=True))
    assert inferences == 256
    assert executions < inferences, f"{executions} executions for {inferences} inferences: no batch was formed"


def bad_requests(artifacts) -> list[tuple[str, str, dict[str, np.ndarray], str]]:
    """Requests Triton itself refuses, per request, before any backend sees them."""
    window = real_inputs("nhits", artifacts, n=2)["window"]
    return [
        ("wrong shape", "nhits", {"window": window[:, :100]}, "shape"),
        ("wrong dtype", "nhits", {"window": window.astype(np.float64)}, "FP64"),
        ("wrong id dtype", "user_embedding", {"user_id": np.array([[1]], np.int32)}, "INT32"),
        ("batch over max_batch_size", "similarity", {"query": np.ones((257, 384), np.float32)}, "batch"),
        ("unknown model", "no_such_model", {"window": window}, "no_such_model"),
        ("unknown tensor name", "nhits", {"windows": window}, "windows"),
        ("missing input", "forecast_blend", {"nhits_forecast": np.ones((1, spec.HORIZON), np.float32)}, "expected 2"),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_bad_request_gets_an_error_naming_the_problem_while_a_good_one_succeeds(triton, artifacts, protocol):
    good = real_inputs("nhits", artifacts, n=1)
    expected = infer(triton, protocol, "nhits", good)["forecast"]
    for what, model, inputs, needle in bad_requests(artifacts):
        with cf.ThreadPoolExecutor(2) as pool:
            bad = pool.submit(infer, triton, protocol, model, inputs)
            ok = pool.submit(infer, triton, protocol, "nhits", good)
            with pytest.raises(InferenceServerException) as err:
                bad.result(timeout=60)
            assert needle.lower() in str(err.value).lower(), f"{what}: {err.value}"
            assert_close(ok.result(timeout=60)["forecast"], expected, RTOL_SERVED, what)
    assert client(triton, protocol).is_server_ready()


# Values no native backend can refuse per request (serving/README.md "Bad input"): the graph answers the row with
# NaN in every float output and -1 in every id output; its batch-mates get what they get without it.
BAD_ROW = 1


def spoiled(inputs: dict[str, np.ndarray], how: str, ranges: dict, rows=(BAD_ROW,)) -> dict[str, np.ndarray]:
    """A copy of `inputs` whose first input holds a bad value in each of `rows`."""
    out = {k: v.copy() for k, v in inputs.items()}
    name, x = next(iter(out.items()))
    for r in rows:
        if x.dtype.kind == "f":
            x[r, 3] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[how]
        else:
            x[r, 0] = {"negative": -1, "past": ranges[name][1], "huge": 2**62}[how]
    return out


def assert_sentinel_row(model: str, outputs: dict[str, np.ndarray], row: int) -> None:
    for t in spec.MODELS[model].outputs:
        y = outputs[t.name][row]
        if t.dtype == "int64":
            assert (y == -1).all(), f"{model}.{t.name} row {row}: {y} is not the id sentinel -1"
        else:
            assert np.isnan(y).all(), f"{model}.{t.name} row {row}: {y[:4]} is not the NaN sentinel"


def assert_rows_equal(model: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    if "ids" in want:
        assert_topk_equal(got["ids"], got["scores"], want["ids"], want["scores"])
        return
    for name in want:
        assert_close(got[name], want[name], RTOL_SERVED, f"{model}.{name} {what}")


SENTINEL_CASES = [
    ("nhits", "nan"),
    ("reservoir", "inf"),
    ("forecast_blend", "-inf"),
    ("similarity", "nan"),
    ("user_embedding", "negative"),
    ("user_embedding", "past"),
    ("forecast", "nan"),
    ("recommend", "negative"),
    ("recommend", "huge"),
]


@pytest.fixture(scope="module")
def id_ranges(repo):
    from clients import ranges_from_repository

    return ranges_from_repository(repo)


def sample(model: str, artifacts, n: int) -> dict[str, np.ndarray]:
    base = {"forecast": "nhits", "recommend": "user_embedding"}.get(model, model)
    return real_inputs(base, artifacts, n)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model, how", SENTINEL_CASES, ids=[f"{m}-{h}" for m, h in SENTINEL_CASES])
def test_a_bad_value_in_a_request_answers_its_row_with_the_sentinel_and_the_other_rows_as_alone(
    triton, artifacts, id_ranges, model, how, protocol
):
    inputs = sample(model, artifacts, 4)
    served = infer(triton, protocol, model, spoiled(inputs, how, id_ranges))
    assert_sentinel_row(model, served, BAD_ROW)
    good = [r for r in range(4) if r != BAD_ROW]
    alone = infer(triton, protocol, model, {k: v[good] for k, v in inputs.items()})
    assert_rows_equal(model, {k: v[good] for k, v in served.items()}, alone, "good rows beside a bad one")


BATCH_DELAY_US = 200_000  # the batching server waits this long for 16 requests: they always meet


@pytest.fixture(scope="module")
def batching(repo, tmp_path_factory):
    """A private server over a copy of the repository whose configs wait BATCH_DELAY_US for a batch of 16, so
    that 16 simultaneous requests are one execution however busy the cores are (the committed configs wait
    0 to 100 us, and on two loaded cores requests released together can arrive 1 ms apart)."""
    import re

    from reliability.faults import copy_repo, make_server
    from repository import integrity

    models = ("nhits", "similarity", "user_embedding", "recommend")
    copy = copy_repo(repo, tmp_path_factory.mktemp("batching") / "repo", models)
    for name in models[:-1]:
        path = copy / name / "configs" / "cpu.pbtxt"
        text, n = re.subn(
            r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {BATCH_DELAY_US}", path.read_text()
        )
        assert n == 1
        path.write_text(text.replace("preferred_batch_size: [ 16, 64 ]", "preferred_batch_size: [ 16 ]"))
    integrity.write_manifest(copy)  # the configs are part of what the server verifies: record the edited ones
    server = make_server(copy, tmp_path_factory.mktemp("batching-run"))
    server.start(timeout=180)
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["nhits", "similarity", "user_embedding", "recommend"])
def test_bad_requests_inside_one_dynamic_batch_answer_sentinels_and_their_batch_mates_are_unmoved(
    batching, artifacts, id_ranges, model, protocol
):
    """16 one-row requests at once, every fourth one bad: Triton batches them into one ONNX Runtime call.
    Other rows per protocol, so that the response cache (similarity, recommend) answers none of them."""
    triton = batching
    offset = 16 * list(PROTOCOLS).index(protocol)
    rows = {k: v[offset : offset + 16] for k, v in sample(model, artifacts, 32).items()}
    bad = [r for r in range(16) if r % 4 == 1]
    mixed = spoiled(rows, "nan" if next(iter(rows.values())).dtype.kind == "f" else "past", id_ranges, bad)
    requests = [{k: v[r : r + 1] for k, v in mixed.items()} for r in range(16)]
    step = {"recommend": "user_embedding"}.get(model, model)  # the step that batches (recommend caches)
    before = model_stats(triton, step)
    answers = burst(triton, protocol, model, requests)
    inferences, executions = (a - b for a, b in zip(model_stats(triton, step), before, strict=True))
    assert executions <= 4 < inferences, f"{inferences} requests in {executions} executions: no batch of the 16"
    alone = infer(triton, protocol, model, {k: v[[r for r in range(16) if r not in bad]] for k, v in rows.items()})
    k = 0
    for r, answer in enumerate(answers):
        if r in bad:
            assert_sentinel_row(model, answer, 0)
            continue
        assert_rows_equal(model, answer, {n: v[k : k + 1] for n, v in alone.items()}, f"request {r}")
        k += 1


def cache_hits(triton, model: str) -> int:
    c = httpclient.InferenceServerClient(triton.http_url)
    try:
        return int(c.get_inference_statistics(model)["model_stats"][0]["inference_stats"]["cache_hit"]["count"])
    finally:
        c.close()


@pytest.mark.parametrize("model", ["recommend", "similarity"])
def test_response_cache_answers_a_repeated_query_and_a_repeated_bad_one_with_its_sentinel(
    triton, artifacts, id_ranges, model
):
    inputs = sample(model, artifacts, 3)
    bad = spoiled(inputs, "past" if model == "recommend" else "nan", id_ranges)
    before = cache_hits(triton, model)
    first, first_bad = infer(triton, "http", model, inputs), infer(triton, "http", model, bad)
    second, second_bad = infer(triton, "grpc", model, inputs), infer(triton, "grpc", model, bad)
    assert cache_hits(triton, model) >= before + 2
    for a, b in ((first, second), (first_bad, second_bad)):
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_array_equal(a["scores"], b["scores"])
    assert_sentinel_row(model, second_bad, BAD_ROW)
    good = [r for r in range(3) if r != BAD_ROW]
    np.testing.assert_array_equal(second_bad["ids"][good], second["ids"][good])


def test_model_repository_api_is_refused_without_the_admin_key(triton):
    c = httpclient.InferenceServerClient(triton.http_url)
    try:
        with pytest.raises(InferenceServerException, match="(?i)restricted|unauthori|forbidden|key"):
            c.get_model_repository_index()
        index = c.get_model_repository_index(headers=admin_headers(triton.key, "http"))
    finally:
        c.close()
    assert {m["name"] for m in index} >= set(spec.MODELS)
    g = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        with pytest.raises(InferenceServerException):
            g.get_model_repository_index()
        assert g.get_model_repository_index(headers=admin_headers(triton.key, "grpc")) is not None
    finally:
        g.close()


def test_endpoints_listen_on_loopback_only(triton):
    assert triton.http_url.startswith("127.0.0.1:") and triton.grpc_url.startswith("127.0.0.1:")
    assert triton.metrics_url.startswith("http://127.0.0.1:")


def test_every_model_of_the_repository_loaded(triton):
    assert triton.unavailable_models() == {}


@pytest.mark.parametrize("model", ["nhits", "user_embedding"])
def test_raw_http_and_grpc_requests_with_a_bad_row_answer_its_row_with_the_sentinel(
    triton, artifacts, id_ranges, model
):
    """No tritonclient: a binary-tensor HTTP body and a gRPC ModelInferRequest with raw_input_contents, as any
    other client would build them; one row bad, the others answered as alone."""
    import http.client
    import json

    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    inputs = sample(model, artifacts, 4)
    bad = spoiled(inputs, "nan" if model == "nhits" else "negative", id_ranges)
    (name, x), out = next(iter(bad.items())), spec.MODELS[model].outputs[0]
    want = infer(triton, "grpc", model, {name: inputs[name][[0, 2, 3]]})[out.name]
    datatype = np_to_triton_dtype(x.dtype)

    host, port = triton.http_url.rsplit(":", 1)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(x.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": out.name, "parameters": {"binary_data": False}}],
        }
    ).encode()
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            "POST", f"/v2/models/{model}/infer", body=header + x.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )  # fmt: skip
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, body
    over_http = np.array([np.nan if v is None else v for v in body["outputs"][0]["data"]], np.float32)

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype)
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(triton.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    over_grpc = np.frombuffer(reply.raw_output_contents[0], np.float32)

    for got in (over_http, over_grpc):
        got = got.reshape(4, *out.dims)
        assert np.isnan(got[BAD_ROW]).all(), "the bad row got a real-looking answer"
        assert_close(got[[0, 2, 3]], want, RTOL_SERVED, f"{model}: the good rows of a raw request")
