"""PyTorch -> ONNX for every model with an ONNX file of its own, verified against PyTorch.

    python -m export.onnx_export --artifacts artifacts --repo model_repository [--models nhits,similarity]

For each model: load the trained module, export it with the tensor names of
`models.spec` and a dynamic batch axis (opset 17, one self-contained file at
`<repo>/<model>/1/model.onnx`), run the ONNX checker and strict shape inference,
then compare ONNX Runtime (CPU) with PyTorch on fresh random inputs and on real
test-split inputs. The exported module is the trained one inside models.guard's per-row value checks
(NaN/Inf rows and ids out of range answer NaN / -1); the guard is verified on a test batch with two
spoiled rows. Results go to `<artifacts>/reports/export.json`.

Error measure, per output tensor: max|ort - torch| / max(max|torch|, 1e-12), which
must be <= 1e-4 in FP32. Integer outputs (top-k ids) must be identical except at
positions where the two scores agree within that same bound (exact ties, whose
order is arbitrary).

A model is skipped when its checkpoint hash, the exporter source hash and the ONNX
file's own hash all match the record `model.onnx.json` written beside it after
the last successful export.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from common.cli import CliError, OneLineParser, require_dir, run_main, setup_logging
from common.files import read_json, sha256_file, sha256_files, write_json
from common.ort import ort_session
from export import graphs
from models import spec

if TYPE_CHECKING:  # torch is imported where it is used: a bad command line fails in a second, not ten
    import torch

log = logging.getLogger("export.onnx_export")

PROG = "export.onnx_export"
OPSET = 17  # TorchScript exporter
DYNAMO_OPSET = 18  # the dynamo exporter's lowest
CONTROL_FLOW = {"If", "Loop", "Scan"}
MAX_EXPORT_BATCH = 1 << 16
FP32_BOUND = 1e-4
RANDOM_SEED = 20240917
TRACE_BATCH = 2  # not 1, so the tracer cannot specialise the batch axis away
RANDOM_BATCH = 7
TEST_BATCH = 64
RECORD_SUFFIX = ".json"  # model.onnx -> model.onnx.json
# Metadata key of the id range the graph's value guard enforces (models/guard.py), read back by the clients
# (clients.ranges_from_repository) and the checks: "lo,hi" means lo <= id < hi.
VALID_RANGE_KEY = "valid_range.{input}"

_ROOT = Path(__file__).resolve().parent.parent


def exporter_source_hash() -> str:
    """Hash of the code that decides what the ONNX graph looks like: this exporter and the model definitions."""
    files = [_ROOT / "export" / "onnx_export.py", _ROOT / "export" / "graphs.py"]
    files += sorted((_ROOT / "models").glob("*.py"))
    return sha256_files(files)


def checkpoint_files(name: str, artifacts: Path) -> list[Path]:
    """The checkpoint file(s) a model is loaded from; CliError when missing."""
    from models import registry

    stem = "reservoir" if name == spec.STREAM.name else name  # the stream wraps the reservoir checkpoint
    path = Path(registry.checkpoint_path(artifacts, stem))
    if not path.is_file():
        raise CliError(
            f"{name}: checkpoint {path} is missing; train first with `python -m models.train --out {artifacts}`"
        )
    return [path]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _outputs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        out = model(*inputs)
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [_to_numpy(o) for o in out]


def valid_ranges(name: str, model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Integer inputs and the half-open range of ids the model can look up (from its embedding table)."""
    import torch

    inputs, _ = graphs.io_tensors(name)
    int_inputs = [t.name for t in inputs if t.dtype.startswith("int")]
    if not int_inputs:
        return {}
    declared = spec.MODELS[name].extra.get("ranges") if name in spec.MODELS else None
    if declared:  # text_encoder: token ids within the vocabulary, mask values 0 / 1
        return {i: tuple(declared[i]) for i in int_inputs}
    n = None
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            n = m.num_embeddings
            break
    if n is None:
        n = getattr(model, "num_embeddings", None) or getattr(model, "n_users", None)
    if n is None:
        table = next((p for p in model.parameters()), None)
        if table is None:
            table = next((b for b in model.buffers()), None)
        n = int(table.shape[0]) if table is not None else spec.N_USERS
    return {i: (0, int(n)) for i in int_inputs}


def guarded(
    model: torch.nn.Module, inputs: list[str], outputs: list[str], ranges: dict[str, tuple[int, int]]
) -> torch.nn.Module:
    """The module as served: models.guard's per-row value checks around it (the wire contract for NaN/Inf
    and ids out of range; a streamed state_out keeps its state_in on a bad row)."""
    from models.guard import Guarded

    carry = {}
    if graphs.STREAM_STATE_OUT in outputs and graphs.STREAM_STATE_IN in inputs:
        carry = {outputs.index(graphs.STREAM_STATE_OUT): inputs.index(graphs.STREAM_STATE_IN)}
    return Guarded(model, {inputs.index(k): v for k, v in ranges.items()}, carry).eval()


def _model_of(inputs: list[str], outputs: list[str]) -> str:
    """The spec model whose ONNX tensors these are (torch_export is called with names only)."""
    for name in graphs.ALL_MODELS:
        if graphs.io_names(name) == (list(inputs), list(outputs)):
            return name
    raise CliError(f"no model in models.spec has inputs {inputs} and outputs {outputs}")


def torch_export(
    model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str]
) -> tuple[str, int]:
    """Write an ONNX file with named tensors and a dynamic batch axis; returns (exporter, opset).

    The TorchScript exporter is tried first. Its graph is rejected when it holds control flow
    (If / Loop): the tracer emits those where it loses a static per-sample dim (N-HiTS' squeeze after
    interpolation), and TensorRT would build them as run-time conditionals. The dynamo exporter keeps
    every per-sample dim static and is used instead."""
    import torch

    dynamic_axes = {n: {0: "batch"} for n in (*inputs, *outputs)}
    for t in (t for ts in graphs.io_tensors(_model_of(inputs, outputs)) for t in ts):
        for axis, d in enumerate(t.dims, start=1):
            if d == spec.SEQUENCE:
                dynamic_axes[t.name][axis] = "sequence"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )
        control = sorted({n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node} & CONTROL_FLOW)
        if not control:
            return "torchscript", OPSET
        log.info("TorchScript graph has %s nodes; exporting with the dynamo exporter instead", "/".join(control))
    except (TypeError, RuntimeError, NotImplementedError) as e:  # the legacy exporter is gone or cannot trace it
        log.warning("TorchScript exporter failed (%s); trying the dynamo exporter", e)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    dynamic_shapes = tuple({0: batch} for _ in example)
    params = inspect.signature(model.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):  # forward(*inputs): models.guard
        dynamic_shapes = (dynamic_shapes,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=DYNAMO_OPSET,
            external_data=False,
            report=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return "dynamo", DYNAMO_OPSET


def pin_io_shapes(name: str, model_proto: onnx.ModelProto) -> None:
    """Declare every graph input/output as ('batch', *spec dims). The tracer leaves some per-sample dims
    symbolic (e.g. after interpolation); strict shape inference afterwards proves the declared dims right."""
    want_in, want_out = graphs.io_tensors(name)
    for got, want in ((model_proto.graph.input, want_in), (model_proto.graph.output, want_out)):
        by_name = {t.name: t for t in want}
        for v in got:
            t = by_name.get(v.name)
            if t is None:
                continue
            dims = v.type.tensor_type.shape.dim
            if len(dims) != len(t.dims) + 1:
                continue  # check_graph reports it
            dims[0].Clear()
            dims[0].dim_param = "batch"
            for d, size in zip(dims[1:], t.dims, strict=True):
                d.Clear()
                if size == spec.SEQUENCE:
                    d.dim_param = "sequence"
                else:
                    d.dim_value = size


def check_graph(name: str, model_proto: onnx.ModelProto) -> list[str]:
    """Names, dtypes and shapes of the graph's inputs/outputs against the spec: a list of problems."""
    problems = []
    want_in, want_out = graphs.io_tensors(name)
    for kind, got, want in (
        ("input", model_proto.graph.input, want_in),
        ("output", model_proto.graph.output, want_out),
    ):
        got_names = [v.name for v in got]
        if got_names != [t.name for t in want]:
            problems.append(f"{kind} names {got_names} != {[t.name for t in want]}")
            continue
        for v, t in zip(got, want, strict=True):
            tt = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
            dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
            dims = dims[:1] + [spec.SEQUENCE if isinstance(d, str) else d for d in dims[1:]]
            if dtype != t.dtype:
                problems.append(f"{kind} {v.name} dtype {dtype} != {t.dtype}")
            if not dims or not isinstance(dims[0], str) or dims[1:] != list(t.dims):
                problems.append(f"{kind} {v.name} shape {dims} != ['batch', {', '.join(map(str, t.dims))}]")
    return problems


def random_inputs(
    name: str,
    real: tuple[torch.Tensor, ...],
    ranges: dict[str, tuple[int, int]],
    batch: int,
    seed: int,
    present: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Fresh inputs inside the real inputs' domain: uniform draws between their min and max (prices stay
    positive, reservoir states inside (-1, 1)), ids uniform over the valid range, or over `present` (the ids
    that have a row, where a user's own ids leave gaps in that range)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    names, _ = graphs.io_names(name)
    out = []
    for n, r in zip(names, real, strict=True):
        shape = (batch, *r.shape[1:])
        if r.dtype.is_floating_point:
            lo, hi = float(r.min()), float(r.max())
            out.append((lo + (hi - lo) * torch.rand(shape, generator=gen)).to(r.dtype))
        elif n == "attention_mask":  # a mask is a prefix of ones: 1 to T attended tokens per row
            lengths = torch.randint(1, shape[1] + 1, (batch, 1), generator=gen)
            out.append((torch.arange(shape[1])[None, :] < lengths).to(r.dtype))
        elif present is not None:
            pick = torch.randint(0, len(present), shape, generator=gen)
            out.append(present[pick].to(r.dtype))
        else:
            lo, hi = ranges.get(n, (0, int(r.max()) + 1))
            out.append(torch.randint(lo, hi, shape, generator=gen, dtype=r.dtype))
    return tuple(out)


def present_ids(model: torch.nn.Module) -> torch.Tensor | None:
    """The ids of a user table with the user's own ids (models.similarity.UserEmbedding lookup), else None."""
    import torch

    lookup = getattr(getattr(model, "model", model), "lookup", None)
    return None if lookup is None else torch.nonzero(lookup >= 0).reshape(-1)


def compare(
    name: str, ort_out: list[np.ndarray], torch_out: list[np.ndarray], output_names: list[str]
) -> dict[str, Any]:
    """Per-output relative error; integer outputs compared exactly, tolerating ties of the paired scores."""
    result: dict[str, Any] = {}
    by_name = dict(zip(output_names, zip(ort_out, torch_out, strict=True), strict=True))
    for out_name, (o, t) in by_name.items():
        if np.issubdtype(t.dtype, np.floating):
            result[out_name] = {"rel_err": graphs.relative_error(o, t)}
            continue
        entry: dict[str, Any] = {"mismatches": 0, "ties": 0}
        if o.shape != t.shape:
            entry["mismatches"] = int(t.size)
            result[out_name] = entry
            continue
        diff = o != t
        scores = by_name.get("scores")
        if scores is not None and diff.any():
            so, st = scores
            tol = FP32_BOUND * max(float(np.max(np.abs(st))), graphs.TINY)
            tie = np.abs(so.astype(np.float64) - st.astype(np.float64)) <= tol
            entry["ties"] = int((diff & tie).sum())
            diff = diff & ~tie
        entry["mismatches"] = int(diff.sum())
        result[out_name] = entry
    return result


def verify(
    name: str, model: torch.nn.Module, onnx_path: Path, artifacts: Path, ranges: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on random inputs (batch 7), real test inputs (batch 64) and batch 1; and the
    value guard on the test batch with two rows spoiled ("guard", graphs.guard_check)."""
    from models import registry

    input_names, output_names = graphs.io_names(name)
    sess = ort_session(onnx_path)
    test = tuple(registry.example_inputs(name, artifacts, "test", TEST_BATCH))
    cases = {
        "random": random_inputs(name, test, ranges, RANDOM_BATCH, RANDOM_SEED, present_ids(model)),
        "test": test,
        "test_batch1": tuple(t[:1] for t in test),
    }
    results = {}
    for case, inputs in cases.items():
        feeds = {n: _to_numpy(t) for n, t in zip(input_names, inputs, strict=True)}
        ort_out = sess.run(output_names, feeds)
        results[case] = {
            "batch": int(inputs[0].shape[0]),
            **compare(name, ort_out, _outputs(model, inputs), output_names),
        }
    results["guard"] = graphs.guard_check(
        sess, {n: _to_numpy(t) for n, t in zip(input_names, test, strict=True)}, ranges
    )
    if name == "text_encoder":
        results["sentence_transformers"] = verify_sentence_transformers(sess, artifacts)
    return results


def verify_sentence_transformers(sess: Any, artifacts: Path) -> dict[str, Any]:
    """The ONNX encoder on tokenizer output against `SentenceTransformer.encode` on the same texts: test-split
    movie texts and the free-text queries of models.real_data, one batch each and text by text."""
    from models import data, real_data

    texts = data.load_texts(artifacts, "test")[:TEST_BATCH] + list(real_data.QUERIES)
    ref = real_data.sentence_transformer(artifacts).encode(texts, convert_to_numpy=True, show_progress_bar=False)
    tok = real_data.load_tokenizer(real_data.tokenizer_json(artifacts))
    ids, mask = real_data.tokenize(tok, texts)
    batch = sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    alone = np.concatenate(
        [
            sess.run(
                ["embedding"], dict(zip(("input_ids", "attention_mask"), real_data.tokenize(tok, [t]), strict=True))
            )[0]
            for t in texts
        ]
    )
    return {
        "embedding": {"rel_err": max(graphs.relative_error(batch, ref), graphs.relative_error(alone, ref))},
        "texts": len(texts),
        "reference": "sentence_transformers.SentenceTransformer.encode (the packaged all-MiniLM-L6-v2)",
    }


def failures(name: str, checks: dict[str, Any]) -> list[str]:
    """Every bound the verification results exceed, as readable strings."""
    bad = [f"{name}/guard: {p}" for p in checks.get("guard", {}).get("problems", [])]
    for case, outs in checks.items():
        if case == "guard":
            continue
        for out_name, r in outs.items():
            if not isinstance(r, dict):
                continue
            if not r.get("rel_err", 0.0) <= FP32_BOUND:  # NaN fails too
                bad.append(f"{name}/{case}/{out_name}: relative error {r['rel_err']:.3g} > {FP32_BOUND:g}")
            if r.get("mismatches", 0):
                bad.append(f"{name}/{case}/{out_name}: {r['mismatches']} ids differ (not at score ties)")
    return bad


def export_one(name: str, artifacts: Path, repo: Path, force: bool, source_hash: str) -> dict[str, Any]:
    import torch

    from models import registry

    ckpts = checkpoint_files(name, artifacts)
    ckpt_hash = sha256_files(ckpts)
    out_dir = spec.version_dir(name, repo)
    onnx_path = out_dir / spec.ONNX_FP32
    record_path = onnx_path.with_name(onnx_path.name + RECORD_SUFFIX)
    if not force and onnx_path.is_file() and record_path.is_file():
        record = read_json(record_path)
        if (
            record.get("checkpoint_sha256") == ckpt_hash
            and record.get("exporter_source_sha256") == source_hash
            and record.get("onnx_sha256") == sha256_file(onnx_path)
        ):
            log.info("%s: checkpoint and exporter unchanged, keeping %s", name, onnx_path)
            return {**record, "skipped": True}

    t0 = time.perf_counter()
    input_names, output_names = graphs.io_names(name)
    trained = registry.load_model(name, artifacts).eval()
    ranges = valid_ranges(name, trained)
    model = guarded(trained, input_names, output_names, ranges)
    example = tuple(registry.example_inputs(name, artifacts, "train", TRACE_BATCH))
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path.unlink(missing_ok=True)
    exporter, opset = torch_export(model, example, onnx_path, input_names, output_names)
    export_s = time.perf_counter() - t0

    proto = onnx.load(str(onnx_path))
    pin_io_shapes(name, proto)
    problems = check_graph(name, proto)
    if problems:
        raise CliError(f"{name}: exported graph does not match models.spec: {'; '.join(problems)}")
    meta = {
        "source_checkpoint": ",".join(p.name for p in ckpts),
        "source_checkpoint_sha256": ckpt_hash,
        "exporter": f"torch {torch.__version__} {exporter}",
        "exporter_source_sha256": source_hash,
        "model_name": name,
    }
    for input_name, (lo, hi) in ranges.items():
        meta[VALID_RANGE_KEY.format(input=input_name)] = f"{lo},{hi}"
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **meta})
    proto.producer_name = "export.onnx_export"
    stripped = graphs.strip_node_metadata(proto)
    log.debug("%s: dropped doc strings / metadata (stack traces) of %d nodes", name, stripped)
    onnx.save(proto, str(onnx_path), save_as_external_data=False)
    del proto
    onnx.checker.check_model(str(onnx_path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(onnx_path), str(onnx_path) + ".inferred", strict_mode=True)
    Path(str(onnx_path) + ".inferred").unlink()

    t1 = time.perf_counter()
    checks = verify(name, model, onnx_path, artifacts, ranges)
    verify_s = time.perf_counter() - t1
    record = {
        "model": name,
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "checkpoint_sha256": ckpt_hash,
        "exporter_source_sha256": source_hash,
        "exporter": exporter,
        "opset": opset,
        "torch": torch.__version__,
        "onnx_version": onnx.__version__,
        "inputs": input_names,
        "outputs": output_names,
        "metadata": meta,
        "checker": "passed",
        "verification": checks,
        "export_s": round(export_s, 3),
        "verify_s": round(verify_s, 3),
        "skipped": False,
    }
    bad = failures(name, checks)
    record["passed"] = not bad
    record["failures"] = bad
    if not bad:
        write_json(record_path, record)
    log.info("%s: exported in %.1fs, verified in %.1fs -> %s", name, export_s, verify_s, onnx_path)
    return record


def install_tokenizer(artifacts: Path, repo: Path) -> Path:
    """The encoder's own tokenizer.json beside the tokenizer model (model_repository/tokenizer/1/model.py reads
    it there): the served tokenizer and the exported encoder always come from the same folder."""
    from tokenizers import Tokenizer

    from models import real_data

    src = real_data.tokenizer_json(artifacts)
    tok = Tokenizer.from_file(str(src))
    # the encoder's max_seq_length as the file's own truncation (a saved tokenizer.json often says 128 or 512);
    # no padding: the served model pads to its length buckets
    tok.enable_truncation(max_length=real_data.encoder_config(artifacts).max_tokens)
    tok.no_padding()
    text = tok.to_str(pretty=True)
    dst = spec.version_dir("tokenizer", repo) / "tokenizer.json"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.is_file() or dst.read_text() != text:
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(dst)
    return dst


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="training artifacts (checkpoints/, data/)")
    p.add_argument(
        "--repo", type=Path, required=True, help="Triton model repository to write <model>/1/model.onnx into"
    )
    p.add_argument("--models", help=f"comma-separated subset of {','.join(graphs.ALL_MODELS)} (default: all)")
    p.add_argument("--force", action="store_true", help="export even when nothing changed")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = graphs.parse_models(args.models)
    require_dir(args.artifacts, "artifacts directory", f"train with `python -m models.train --out {args.artifacts}`")
    require_dir(args.repo, "model repository")
    spec.use_dims_of(args.artifacts)  # the window, horizon and embedding sizes training used
    setup_logging(args.verbose)
    import torch

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    for name in names:
        checkpoint_files(name, args.artifacts)  # fail before any work when one is missing

    torch.set_num_threads(1)  # shared 2-core machines: PyTorch's OpenMP regions stall under load with 2
    source_hash = exporter_source_hash()
    report_path = graphs.reports_dir(args.artifacts) / "export.json"
    report = read_json(report_path) if report_path.is_file() else {}
    report.update(
        {
            "bound": {
                "fp32_rel_err": FP32_BOUND,
                "definition": "per output: max|ort - torch| / max(max|torch|, 1e-12); "
                "ids identical except where the paired scores agree within the same bound (ties)",
            },
            "opset": {"torchscript": OPSET, "dynamo": DYNAMO_OPSET},
        }
    )
    results = report.setdefault("models", {})
    bad: list[str] = []
    for name in names:
        results[name] = export_one(name, args.artifacts, args.repo, args.force, source_hash)
        bad += results[name].get("failures", [])
    if "text_encoder" in names:
        install_tokenizer(args.artifacts, args.repo)
    write_json(report_path, report)
    if bad:
        failed = sorted({b.split("/")[0] for b in bad})
        raise CliError(f"ONNX verification failed for {', '.join(failed)}: {bad[0]} (details in {report_path})")
    kept = [n for n in names if results[n].get("skipped")]
    done = [n for n in names if n not in kept]
    print(
        f"exported {', '.join(done) or 'nothing'}"
        + (f" (unchanged, kept: {', '.join(kept)})" if kept else "")
        + f"; every output within {FP32_BOUND:g} of PyTorch; report {report_path}"
    )
    return 0


if __name__ == "__main__":
    run_main(PROG, main)
