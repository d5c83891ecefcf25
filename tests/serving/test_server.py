"""Every model and both ensembles, served by a real Triton over HTTP and gRPC, against ONNX
Runtime and PyTorch in-process; dynamic batching; bad input; restricted APIs; the cache."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from models import registry, spec
from serving.server import admin_headers

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
RTOL_SERVED = 1e-5  # same ONNX file, same ONNX Runtime: only batch composition may differ
RTOL_TORCH = 1e-4  # the export bound of the export issue


def client(triton, protocol: str):
    if protocol == "http":
        return httpclient.InferenceServerClient(triton.http_url, network_timeout=60.0)
    return grpcclient.InferenceServerClient(triton.grpc_url)


def infer(triton, protocol: str, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mod = PROTOCOLS[protocol]
    tensors = []
    for name, array in inputs.items():
        t = mod.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        t.set_data_from_numpy(array)
        tensors.append(t)
    known = spec.MODELS.get(model)
    outputs = [mod.InferRequestedOutput(t.name) for t in known.outputs] if known else None
    c = client(triton, protocol)
    try:
        timeout = {"client_timeout": 60} if protocol == "grpc" else {}
        result = c.infer(model, tensors, outputs=outputs, **timeout)
        return {t.name: result.as_numpy(t.name) for t in known.outputs}
    finally:
        c.close()


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
    inputs = real_inputs(model, artifacts)
    served = infer(triton, protocol, model, inputs)
    session = ort.InferenceSession(
        str(spec.version_dir(model, repo) / spec.ONNX_FP32), providers=["CPUExecutionProvider"]
    )
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
        assert_close(value, torch_out[name], RTOL_TORCH, f"{model}.{name} vs PyTorch ({protocol})")


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


def model_stats(triton, model: str) -> tuple[int, int]:
    c = httpclient.InferenceServerClient(triton.http_url)
    try:
        stats = c.get_inference_statistics(model)["model_stats"][0]
    finally:
        c.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


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
    assert all(np.array_equal(r, results[0]) for r in results)
    inferences, executions = (a - b for a, b in zip(model_stats(triton, "nhits"), before, strict=True))
    assert inferences == 256
    assert executions < inferences, f"{executions} executions for {inferences} inferences: no batch was formed"


def bad_requests(artifacts) -> list[tuple[str, str, dict[str, np.ndarray], str]]:
    window = real_inputs("nhits", artifacts, n=2)["window"]
    nan, inf = window.copy(), window.copy()
    nan[1, 7] = np.nan
    inf[0, 3] = np.inf
    return [
        ("wrong shape", "nhits", {"window": window[:, :100]}, "shape"),
        ("wrong dtype", "nhits", {"window": window.astype(np.float64)}, "FP64"),
        ("NaN in a window", "nhits", {"window": nan}, "NaN"),
        ("Inf in a window", "reservoir", {"window": inf}, "NaN or Inf"),
        ("user id out of range", "user_embedding", {"user_id": np.array([[10**9]], np.int64)}, "out of range"),
        ("negative user id", "recommend", {"user_id": np.array([[-1]], np.int64)}, "out of range"),
        ("batch over max_batch_size", "similarity", {"query": np.ones((257, 384), np.float32)}, "batch"),
        ("unknown model", "no_such_model", {"window": window}, "no_such_model"),
        ("unknown tensor name", "nhits", {"windows": window}, "windows"),
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
            np.testing.assert_array_equal(ok.result(timeout=60)["forecast"], expected, err_msg=what)
    assert client(triton, protocol).is_server_ready()


def test_a_bad_row_fails_only_its_own_request_inside_a_dynamic_batch(triton, artifacts):
    windows = real_inputs("nhits", artifacts, n=16)["window"]
    windows[5, 0] = np.nan
    c = grpcclient.InferenceServerClient(triton.grpc_url)

    def one(i: int):
        t = grpcclient.InferInput("window", [1, spec.INPUT_SIZE], "FP32")
        t.set_data_from_numpy(windows[i : i + 1])
        try:
            return c.infer("nhits", [t]).as_numpy("forecast")
        except InferenceServerException as exc:
            return exc

    try:
        with cf.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(16)))
    finally:
        c.close()
    assert isinstance(results[5], InferenceServerException) and "NaN" in str(results[5])
    assert all(isinstance(r, np.ndarray) for i, r in enumerate(results) if i != 5)


def test_response_cache_answers_a_repeated_recommend_query(triton, artifacts):
    """The recommend ensemble is cached (similarity's cpu config is not: see test_configs)."""
    user = real_inputs("user_embedding", artifacts, n=1)  # {"user_id": (1, 1) int64}, the ensemble input
    c = httpclient.InferenceServerClient(triton.http_url)
    try:
        before = c.get_inference_statistics("recommend")["model_stats"][0]["inference_stats"]["cache_hit"]["count"]
        first = infer(triton, "http", "recommend", user)
        second = infer(triton, "grpc", "recommend", user)
        stats = c.get_inference_statistics("recommend")["model_stats"][0]["inference_stats"]
    finally:
        c.close()
    np.testing.assert_array_equal(first["ids"], second["ids"])
    np.testing.assert_array_equal(first["scores"], second["scores"])
    assert int(stats["cache_hit"]["count"]) >= int(before) + 1


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
