"""`make export DOCS=... ENCODER=...`: your documents searched with your encoder (README "Your documents").

A small random BERT sentence-transformers folder is built here with `transformers` (nothing from a hub), a
documents file of a few dozen texts with ids of their own is written, and `make export` runs end to end into a
new repository folder (no CONFIGS=): the export checks the encoder against SentenceTransformer.encode, and a
real Triton's `search` answers the documents' ids, exactly as SentenceTransformer.encode + an exact top-k over
the documents rank them. Bad folders and bad documents are one-line errors before anything is trained.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.ort import ort_session
from models import real_data, spec, userdata
from models.text_encoder import EncoderConfig, EncoderError
from repository.layout import served_file

WORDS = "space robot adventure comedy romance crime thriller war horror ghost music nature hero western time".split()
DOC_IDS = 1_000 + 11 * np.arange(48)


def make_encoder(folder: Path, pooling: str = "mean", normalize: bool = True, seed: int = 0) -> Path:
    """A random 2-layer BERT (hidden 32) saved as a sentence-transformers folder, with a WordPiece tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    raw = folder.parent / f"{folder.name}-raw"
    raw.mkdir(parents=True, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,()'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *WORDS]
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(raw / "vocab.txt"), do_lower_case=True).save_pretrained(str(raw))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(raw), safe_serialization=True)
    word = st_models.Transformer(str(raw), max_seq_length=64)
    pool = st_models.Pooling(32, pooling_mode="cls" if pooling == "cls" else "mean")
    modules = [word, pool] + ([st_models.Normalize()] if normalize else [])
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    shutil.rmtree(raw)
    return folder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("encoder") / "tiny-bert")


def docs_frame(n: int = len(DOC_IDS)) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) + f" {i}" for i in range(n)]
    return pd.DataFrame({"id": DOC_IDS[:n], "text": texts})


def test_the_random_encoder_folder_reads_as_a_mean_pooled_normalised_bert(encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    cfg = EncoderConfig.read(encoder)
    assert (cfg.pooling, cfg.normalize, cfg.dim, cfg.heads, cfg.max_tokens) == ("mean", True, 32, 4, 64)
    assert cfg.max_tokens == SentenceTransformer(str(encoder), device="cpu").max_seq_length
    cls = EncoderConfig.read(make_encoder(tmp_path / "cls", pooling="cls", normalize=False))
    assert (cls.pooling, cls.normalize) == ("cls", False)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        (
            lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"),
            "model.safetensors is missing (pytorch_model.bin is a pickle",
        ),
        (lambda f: _edit(f / "config.json", model_type="roberta"), "model_type 'roberta' is not supported"),
        (lambda f: _edit(f / "config.json", auto_map={"AutoModel": "x.Y"}), "auto_map names custom model code"),
        (
            lambda f: _edit(
                f / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True
            ),
            "pooling_mode_max_tokens is not supported",
        ),
        (lambda f: (f / "modules.json").unlink(), "modules.json is missing"),
    ],
)
def test_an_unsupported_encoder_folder_is_one_line_naming_the_problem(encoder, tmp_path, spoil, message):
    folder = tmp_path / "enc"
    shutil.copytree(encoder, folder)
    spoil(folder)
    with pytest.raises(EncoderError, match=re.escape(message)):
        EncoderConfig.read(folder)


def _edit(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (docs_frame(3).rename(columns={"text": "body"}), "no column 'text'"),
        (docs_frame(3).assign(text=["a", "  ", "c"]), "row 1 (id 1011): the text is empty"),
        (docs_frame(3).assign(id=[5, 6, 5]), "row 2: id 5 repeats row 0"),
        (docs_frame(3).assign(id=["a", "b", "c"]), "row 0: id 'a' is not an integer"),
        (docs_frame(3).assign(id=[1, -2, 3]), "row 1: id -2 is negative"),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_bad_documents_are_one_line_naming_the_row(tmp_path, frame, message, suffix):
    path = tmp_path / f"docs{suffix}"
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
    }.get(suffix, lambda: frame.to_parquet(path))()
    with pytest.raises(userdata.DataError, match=re.escape(message)):
        userdata.read_documents(path)


def test_the_cli_refuses_a_bad_encoder_before_training(encoder, tmp_path):
    folder = tmp_path / "enc"
    shutil.copytree(encoder, folder)
    (folder / "tokenizer.json").unlink()
    docs = tmp_path / "docs.csv"
    docs_frame().to_csv(docs, index=False)
    out = tmp_path / "artifacts"
    proc = subprocess.run(
        [sys.executable, "-m", "models.train", "--out", out, "--small", "--docs", docs, "--encoder", folder],
        cwd=spec.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "tokenizer.json is missing" in proc.stderr
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_make_export_docs_with_your_encoder_into_a_new_folder_serves_your_ids(encoder, tmp_path):
    """End to end: `make export DOCS=docs.jsonl ENCODER=folder REPO=<new folder>`, then search through Triton."""
    from sentence_transformers import SentenceTransformer

    from clients import Client
    from serving.server import TritonServer, free_port

    docs = tmp_path / "docs.jsonl"
    frame = docs_frame()
    frame.to_json(docs, orient="records", lines=True)
    repo, artifacts = tmp_path / "my_repository", tmp_path / "my_artifacts"
    cmd = ["make", "--no-print-directory", "export", "SIZE=small", f"DOCS={docs}", f"ENCODER={encoder}"]
    done = subprocess.run(
        [*cmd, f"REPO={repo}", f"ARTIFACTS={artifacts}"], cwd=spec.ROOT, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((artifacts / "reports" / "export.json").read_text())["models"]["text_encoder"]
    assert record["verification"]["sentence_transformers"]["embedding"]["rel_err"] <= 1e-4
    calib = json.loads((artifacts / "reports" / "calibration.json").read_text())["models"]["text_encoder"]["cpu_file"]
    assert calib["candidates"][calib["chosen"]]["meets_gates"]
    assert "documents of" in (artifacts / "reports" / "train.md").read_text()

    # the catalog is SentenceTransformer.encode of every document (FP32, at export), in the documents' order
    reference = SentenceTransformer(str(encoder), device="cpu")
    catalog = np.load(artifacts / "data" / "catalog.npy")
    want_catalog = reference.encode(list(frame.text), convert_to_numpy=True)
    np.testing.assert_allclose(catalog, want_catalog / np.linalg.norm(want_catalog, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(np.load(artifacts / "data" / "item_ids.npy"), DOC_IDS)
    # what search should answer: the served encoder file in-process, then the exact top-10 over that catalog
    queries = ["space robot adventure", "ghost horror music", list(frame.text)[5]]
    tok = real_data.load_tokenizer(real_data.tokenizer_json(artifacts))
    ids, mask = real_data.tokenize(tok, queries)
    q = ort_session(served_file(repo, "text_encoder")).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    want = DOC_IDS[np.argsort(-(q @ catalog.T), axis=1, kind="stable")[:, : spec.TOP_K]]
    server = TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), run_dir=tmp_path / "run"
    )
    server.start(timeout=180)
    try:
        with Client(server.grpc_url, validate=False) as client:
            top = client.search(queries)
    finally:
        server.stop()
    assert set(top.ids.ravel()) <= set(DOC_IDS)  # your ids, not row numbers
    overlap = np.mean([len(set(a) & set(b)) / spec.TOP_K for a, b in zip(top.ids, want, strict=True)])
    assert overlap >= 0.9, (top.ids, want)  # equal but for near-ties of the random encoder's scores
    from clients.cli import catalog_items, render_search

    text = render_search(top, queries, catalog_items(artifacts))
    first = int(top.ids[2, 0])
    assert f"[id {first}] {frame.text[list(DOC_IDS).index(first)]}" in text  # the client prints the documents
