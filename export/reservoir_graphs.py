"""The reservoir's 168-step window as ONNX graphs of different shapes, timed in ONNX Runtime in one run.

    python -m export.reservoir_graphs                 # -> build/reservoir_graphs.json and a table
    python -m export.reservoir_graphs --seconds 0.3 --repeats 1 --batches 1

Candidates (1000 units, 168 steps, the project's exporter and value guard unless said otherwise):

- former: the former reservoir, a Bernoulli(1 %) 1000 x 1000 W, the leaky update node by node (stepwise);
- former_fused: the same W and update, the input projection computed outside the recurrence (fused graph);
- former_int8: former_fused with each recurrent Gemm's state input quantized with the fixed scale 1/127 (the
  state is tanh-bounded, |x| < 1: no calibration) and W INT8 per output unit, everything else FP32;
- blocks_stepwise: the served reservoir (block-diagonal W), its leaky update node by node;
- blocks: the served graph (fused: input projection in chunks, Gemm + Tanh, Mul, Add per step);
- blocks_folded: the same with the leak folded into W (one Gemm + Tanh per step);
- blocks_loop: the served step inside one ONNX Loop over the 168 steps (hand-built; no value guard).

Weights are random (timing does not depend on their values); every candidate is checked against its PyTorch
module (former_int8 against FP32, reported as its error). Each (candidate, batch, threads) is timed `repeats`
times for `seconds`, candidates interleaved, and the median of the repeats' medians is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from models import spec

log = logging.getLogger("export.reservoir_graphs")

DEFAULT_OUT = spec.ROOT / "build" / "reservoir_graphs.json"
CANDIDATES = ("former", "former_fused", "former_int8", "blocks_stepwise", "blocks", "blocks_folded", "blocks_loop")
STATE_SCALE = 1.0 / 127.0  # |x| < 1 after tanh: INT8 steps of 1/127 cover it


def module(name: str):
    import torch

    from models.reservoir import Reservoir, ReservoirConfig

    base = ReservoirConfig()
    cfg = {
        "former": replace(base, topology="random", fold_leak=False, graph="stepwise", input_scaling=0.1),
        "former_fused": replace(base, topology="random", fold_leak=False, graph="fused", input_scaling=0.1),
        "former_int8": replace(base, topology="random", fold_leak=False, graph="fused", input_scaling=0.1),
        "blocks_stepwise": replace(base, graph="stepwise"),
        "blocks_folded": replace(base, fold_leak=True),
    }.get(name, base)
    m = Reservoir(cfg)
    m.in_loc.fill_(4.5)
    m.set_readout(np.random.default_rng(0).normal(0.0, 0.01, (cfg.horizon, cfg.units + 2)))
    torch.set_num_threads(1)
    return m.eval()


def export(name: str, path: Path) -> None:
    import torch

    from export import onnx_export

    m = module(name)
    if name == "blocks_loop":
        onnx.save(loop_graph(m), str(path))
        return
    guarded = onnx_export.guarded(m, ["window"], ["forecast"], {})
    example = torch.from_numpy(np.random.default_rng(1).uniform(50, 150, (2, spec.INPUT_SIZE)).astype(np.float32))
    onnx_export.torch_export(guarded, (example,), path, ["window"], ["forecast"])
    if name == "former_int8":
        proto = onnx.load(str(path))
        quantize_recurrent(proto)
        onnx.save(proto, str(path))


def quantize_recurrent(proto: onnx.ModelProto) -> int:
    """Q/DQ on every Gemm fed by a Tanh-chain state: the state with the fixed STATE_SCALE, W INT8 per output unit."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    added, done, n = [], {}, 0
    for node in list(g.node):
        if node.op_type != "Gemm" or node.input[1] not in inits or len(node.input) < 3:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.ndim != 2 or w.shape[0] != w.shape[1]:
            continue  # the readout, not the recurrence
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if node.input[1] not in done:
            axis = 0 if trans_b else 1  # the output unit's axis of B
            scale = np.maximum(np.abs(w).max(axis=1 - axis), 1e-12) / 127.0
            q = np.round(w / np.expand_dims(scale, 1 - axis)).clip(-127, 127).astype(np.int8)
            base = node.input[1] + "_int8"
            g.initializer.extend(
                [
                    numpy_helper.from_array(q, base),
                    numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                    numpy_helper.from_array(np.zeros(len(scale), np.int8), base + "_zero"),
                ]
            )
            dq = oh.make_node("DequantizeLinear", [base, base + "_scale", base + "_zero"], [base + "_dq"], axis=axis)
            added.append(dq)
            done[node.input[1]] = base + "_dq"
        s, z = f"state_q_scale_{n}", f"state_q_zero_{n}"
        g.initializer.extend(
            [numpy_helper.from_array(np.float32(STATE_SCALE), s), numpy_helper.from_array(np.uint8(128), z)]
        )
        q_out, dq_out = f"{node.input[0]}_q{n}", f"{node.input[0]}_dq{n}"
        added += [
            oh.make_node("QuantizeLinear", [node.input[0], s, z], [q_out]),
            oh.make_node("DequantizeLinear", [q_out, s, z], [dq_out]),
        ]
        node.input[0], node.input[1] = dq_out, done[node.input[1]]
        n += 1
    nodes = added + list(g.node)  # Q/DQ first is not topological for the state: sort
    del g.node[:]
    g.node.extend(topological(nodes, {i.name for i in g.input} | {t.name for t in g.initializer}))
    return n


def topological(nodes: list, known: set[str]) -> list:
    out, known, pending = [], set(known), list(nodes)
    while pending:
        ready = [n for n in pending if all(i in known or not i for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or a missing input")
        for n in ready:
            out.append(n)
            known.update(n.output)
        pending = [n for n in pending if n not in ready]
    return out


def loop_graph(m) -> onnx.ModelProto:
    """window -> forecast with the fused step (over s = x / a, (B * blocks, M)) inside an ONNX Loop."""
    from models.reservoir import EPS

    cfg = m.cfg
    g_, mm, n, t_ = cfg.blocks, cfg.block_size, cfg.units, cfg.window
    c = {
        "eps": np.float32(EPS),
        "loc": np.float32(m.in_loc.item()),
        "scale": np.float32(m.in_scale.item()),
        "w_in": m.w_in.numpy().reshape(g_, 1, mm),
        "bias": m.bias.numpy().reshape(g_, 1, mm),
        "ax13": np.array([1, 3], np.int64),
        "shape_p": np.array([t_, -1, mm], np.int64),
        "shape_x": np.array([-1, n], np.int64),
        "zero": np.array(0, np.int64),
        "trips": np.array(t_ - 1, np.int64),
        "cond": np.array(True),
        "r_x": m.readout_x.numpy(),
        "r_b": m.readout_bias.numpy(),
        "r_u": m.readout_u.numpy(),
        "last": np.array([t_ - 1], np.int64),
        "end": np.array([t_], np.int64),
        "ax1": np.array([1], np.int64),
        "leak": np.float32(cfg.step_leak),
    }
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in c.items()]
    nodes = [
        oh.make_node("Max", ["window", "eps"], ["clamped"]),
        oh.make_node("Log", ["clamped"], ["logw"]),
        oh.make_node("Sub", ["logw", "loc"], ["centred"]),
        oh.make_node("Div", ["centred", "scale"], ["u"]),  # (B, T)
        oh.make_node("Unsqueeze", ["u", "ax13"], ["u4"]),  # (B, 1, T, 1)
        oh.make_node("Mul", ["u4", "w_in"], ["pw"]),
        oh.make_node("Add", ["pw", "bias"], ["p"]),  # (B, G, T, M)
        oh.make_node("Transpose", ["p"], ["pt"], perm=[2, 0, 1, 3]),
        oh.make_node("Reshape", ["pt", "shape_p"], ["P"]),  # (T, B * G, M)
        oh.make_node("Gather", ["P", "zero"], ["p0"], axis=0),
        oh.make_node("Tanh", ["p0"], ["z0"]),
    ]
    body = oh.make_graph(
        [
            oh.make_node("Add", ["i", "one"], ["t"]),
            oh.make_node("Gather", ["P", "t"], ["p_t"], axis=0),
            oh.make_node("Gemm", ["z_in", "w_t", "p_t"], ["pre"]),
            oh.make_node("Tanh", ["pre"], ["h"]),
            oh.make_node("Mul", ["z_in", "keep"], ["kept"]),
            oh.make_node("Add", ["kept", "h"], ["z_out"]),
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "step",
        [
            oh.make_tensor_value_info("i", TensorProto.INT64, []),
            oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            oh.make_tensor_value_info("z_in", TensorProto.FLOAT, ["rows", mm]),
        ],
        [
            oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            oh.make_tensor_value_info("z_out", TensorProto.FLOAT, ["rows", mm]),
        ],
        [
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.ascontiguousarray(cfg.step_leak * m.w.numpy().T), "w_t"),
            numpy_helper.from_array(np.float32(1.0 - cfg.step_leak), "keep"),
        ],
    )
    nodes += [
        oh.make_node("Loop", ["trips", "cond", "z0"], ["zT"], body=body),
        oh.make_node("Mul", ["zT", "leak"], ["xT"]),
        oh.make_node("Reshape", ["xT", "shape_x"], ["x"]),
        oh.make_node("Gemm", ["x", "r_x", "r_b"], ["r0"], transB=1),
        oh.make_node("Slice", ["u", "last", "end", "ax1"], ["u_last"]),
        oh.make_node("Mul", ["u_last", "r_u"], ["ru"]),
        oh.make_node("Add", ["r0", "ru"], ["r"]),
        oh.make_node("Add", ["u_last", "r"], ["ur"]),
        oh.make_node("Mul", ["ur", "scale"], ["sur"]),
        oh.make_node("Add", ["sur", "loc"], ["logf"]),
        oh.make_node("Exp", ["logf"], ["forecast"]),
    ]
    graph = oh.make_graph(
        nodes,
        "reservoir_loop",
        [oh.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", t_])],
        [oh.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", cfg.horizon])],
        inits,
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto


def session(path: Path, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = threads, 1, 3
    if optimized is not None:
        o.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def time_once(sess, x: np.ndarray, seconds: float) -> float:
    for _ in range(2):
        sess.run(None, {"window": x})
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        sess.run(None, {"window": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run(names: list[str], batches: list[int], threads: list[int], seconds: float, repeats: int) -> dict:
    import torch

    rng = np.random.default_rng(2)
    xs = {b: rng.uniform(50, 150, (b, spec.INPUT_SIZE)).astype(np.float32) for b in batches}
    out: dict = {"candidates": {}, "batches": batches, "threads": threads, "seconds": seconds, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="reservoir-graphs-") as tmp:
        paths, sessions = {}, {}
        for name in names:
            paths[name] = Path(tmp) / f"{name}.onnx"
            export(name, paths[name])
            optimized = Path(tmp) / f"{name}.opt.onnx"
            sessions[name] = {t: session(paths[name], t, optimized if t == threads[0] else None) for t in threads}
            proto = onnx.load(str(paths[name]), load_external_data=False)
            kernels = Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
            with torch.no_grad():
                ref_module = module(name)
                ref = ref_module(torch.from_numpy(xs[batches[0]])).numpy()
            got = sessions[name][threads[0]].run(None, {"window": xs[batches[0]]})[0]
            out["candidates"][name] = {
                "onnx_nodes": len(proto.graph.node),
                "ort_kernels_after_fusion": sum(kernels.values()),
                "top_kernels": dict(kernels.most_common(4)),
                "rel_err_vs_pytorch": float(np.abs(got - ref).max() / np.abs(ref).max()),
                "ms": {},
            }
            log.info("%s: %s", name, {k: v for k, v in out["candidates"][name].items() if k != "ms"})
        samples: dict = {}
        for _ in range(repeats):  # candidates interleaved: every repeat sees the same machine
            for b in batches:
                for t in threads:
                    for name in names:
                        samples.setdefault((name, b, t), []).append(time_once(sessions[name][t], xs[b], seconds))
        for (name, b, t), v in samples.items():
            out["candidates"][name]["ms"][f"b{b}_t{t}"] = float(np.median(v))
    return out


def table(result: dict) -> str:
    cols = [f"b{b}_t{t}" for b in result["batches"] for t in result["threads"]]
    head = "| candidate | ONNX nodes | ORT kernels | rel. error | " + " | ".join(
        f"batch {c.split('_')[0][1:]}, {c.split('_t')[1]} thr (ms)" for c in cols
    )
    lines = [head + " |", "|---|" + "---:|" * (3 + len(cols))]
    for name, c in result["candidates"].items():
        ms = " | ".join(f"{c['ms'].get(col, float('nan')):.2f}" for col in cols)
        lines.append(
            f"| {name} | {c['onnx_nodes']} | {c['ort_kernels_after_fusion']} | {c['rel_err_vs_pytorch']:.1e} | {ms} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.reservoir_graphs", description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"subset of {','.join(CANDIDATES)}")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seconds", type=float, default=1.0, help="per timing (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    names = [n for n in args.candidates.split(",") if n]
    if unknown := set(names) - set(CANDIDATES):
        p.error(f"unknown candidates {sorted(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    result = run(names, ints(args.batches), ints(args.threads), args.seconds, args.repeats)
    result["command"] = "python -m export.reservoir_graphs " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
