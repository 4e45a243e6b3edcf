"""`cgc generate`, `cgc compile --generate` and `cgc check --generate` on the command line."""

import json
import re

import pytest
from click.testing import CliRunner

from cgc.cli import main

PROMPT = "ABC 123"  # bytes below the tiny models' 97-token vocabulary
WAFER = ["--backend", "cerebras", "--target", "fabric:32x32"]
STATS = re.compile(
    r"prompt tokens 7, new tokens 8, prefill [\d.]+ ms, decode [\d.]+ tokens/s \((\w+)\)"
)

NOT_CAUSAL = """\
import torch


class Bidirectional(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(50, 16)
        self.qkv = torch.nn.Linear(16, 48)
        self.head = torch.nn.Linear(16, 50)

    def forward(self, ids):
        q, k, v = self.qkv(self.wte(ids)).split(16, dim=-1)
        heads = [x.view(*x.shape[:2], 2, 8).transpose(1, 2) for x in (q, k, v)]
        y = torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=False)
        return self.head(y.transpose(1, 2).reshape(ids.shape[0], ids.shape[1], 16))


def get_model():
    return Bidirectional().eval(), (torch.zeros(1, 16, dtype=torch.long),)
"""


def cgc(*args: str):
    return CliRunner().invoke(main, list(args))


def generated(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def test_generate_streams_what_it_returns_and_reports_speed() -> None:
    streamed = cgc("generate", "tiny-111m", "--prompt", PROMPT, "--max-new-tokens", "8")
    text = generated(streamed)
    assert text.startswith(PROMPT) and len(text.rstrip("\n")) > len(PROMPT)
    assert STATS.search(streamed.stderr).group(1) == "onnxruntime"
    whole = cgc("generate", "tiny-111m", "--prompt", PROMPT, "--max-new-tokens", "8", "--no-stream")
    assert generated(whole) == text
    interpreted = cgc(
        "generate", "tiny-111m", "--prompt", PROMPT, "--max-new-tokens", "8", "--no-stream",
        "--backend", "interpreter",
    )  # fmt: skip
    assert generated(interpreted) == text


def test_sampling_is_reproducible_with_a_seed() -> None:
    args = ["generate", "tiny-111m", "--prompt", PROMPT, "--max-new-tokens", "12", "--no-stream"]
    sampled = [generated(cgc(*args, "--temperature", "1.5", "--seed", s)) for s in "112"]
    assert sampled[0] == sampled[1] != sampled[2]
    top1 = generated(cgc(*args, "--temperature", "1.5", "--top-k", "1"))
    assert top1 == generated(cgc(*args))


def test_artifact_generates_without_the_model(tmp_path) -> None:
    out = tmp_path / "gen"
    compiled = cgc("compile", "tiny-111m", "--generate", "-o", str(out), "--max-len", "32",
                   "--seq-len", "4")  # fmt: skip
    assert compiled.exit_code == 0, compiled.output
    assert "generation: batch 1, prefill 4 tokens, cache capacity 32 tokens" in compiled.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "decode.onnx", "graph.cgc", "manifest.json", "prefill.cgc", "prefill.onnx",
        "weights.onnx.data",
    ]  # fmt: skip
    args = ["--prompt", PROMPT, "--max-new-tokens", "8", "--no-stream"]
    assert generated(cgc("generate", str(out), *args)) == generated(
        cgc("generate", "tiny-111m", *args)
    )


def test_generate_on_the_wafer_simulator_and_its_decode_report() -> None:
    args = ["generate", "tiny-111m", "--prompt", PROMPT, "--max-new-tokens", "8", "--no-stream"]
    wafer = cgc(*args, *WAFER)
    assert generated(wafer) == generated(cgc(*args))
    assert STATS.search(wafer.stderr).group(1) == "cerebras"
    assert "\nper-token latency " in wafer.stderr
    assert "\nfull pipeline: one pass per " in wafer.stderr


def test_a_wafer_generation_artifact(tmp_path) -> None:
    out = tmp_path / "gen"
    compiled = cgc("compile", "tiny-111m", "--generate", "-o", str(out), "--max-len", "32",
                   "--seq-len", "4", *WAFER)  # fmt: skip
    assert compiled.exit_code == 0, compiled.output
    assert compiled.stdout.rstrip().endswith(f"artifact: {out} (cerebras)")
    assert "decode: batch 1, one token per sequence per pass; caches of " in compiled.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "graph.cgc", "manifest.json", "prefill.cgc", "program.json", "program.txt",
        "report.json", "wafer.png", "weights.safetensors",
    ]  # fmt: skip
    decode = json.loads((out / "report.json").read_text())["decode"]
    assert (decode["capacity"], decode["batch"], decode["prompt_tokens"]) == (32, 1, 4)
    assert decode["cache_sequences"] >= decode["sequences_in_flight"]
    args = ["--prompt", PROMPT, "--max-new-tokens", "8", "--no-stream"]
    from_artifact = cgc("generate", str(out), *args)
    assert generated(from_artifact) == generated(cgc("generate", "tiny-111m", *args))
    assert STATS.search(from_artifact.stderr).group(1) == "cerebras"
    elsewhere = cgc("generate", str(out), *args, "--backend", "onnxruntime")
    assert elsewhere.exit_code == 2
    assert elsewhere.stderr.strip() == (
        f"error: {out} runs on cerebras as compiled; drop --backend, --target and --precision"
    )


def test_check_generate_passes() -> None:
    result = cgc("check", "tiny-256m", "--generate", "8", "--seq-len", "6", "--batch", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "tiny-256m: 2 prompt(s) of 6, 6 tokens, 8 new tokens, greedy"
    assert re.match(r"onnxruntime +16/16 ", lines[-2]) and lines[-1] == "PASS"


def test_check_generate_on_the_wafer() -> None:
    result = cgc("check", "tiny-256m", "--generate", "8", "--seq-len", "6", "--backends",
                 "cerebras", "--target", "fabric:32x32")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.match(r"cerebras +8/8 ", lines[-2]) and lines[-1] == "PASS"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "error: the prompt is empty; give at least one character"),
        (
            ["--prompt", PROMPT, "--max-len", "5", "--max-new-tokens", "8"],
            "error: the prompt has 7 tokens, more than --max-len of 5",
        ),
        (
            ["--prompt", PROMPT, "--max-new-tokens", "60"],
            "error: --max-new-tokens 60 after a 7-token prompt passes the model's context of "
            "64 positions",
        ),
        (
            ["--prompt", PROMPT, "--max-new-tokens", "8", *WAFER[:3], "fabric:2x2"],
            "error: decode with the K/V caches of 1 sequence x 14 slots (14.0 KiB) does not fit "
            "fabric:2x2: pipelined: the weights and buffers of all 9 stages need 27 PEs, "
            "fabric:2x2 has 4 usable",
        ),
        (
            ["--prompt", PROMPT, "--target", "fabric:32x32"],
            "error: --target and --precision apply to --backend cerebras, not onnxruntime",
        ),
        (
            ["--prompt", "hello", "--max-new-tokens", "8"],
            "error: prompt token 111 is outside the model's vocabulary of 97 (bytes tokenizer); "
            "use characters the vocabulary covers",
        ),
    ],
    ids=["empty", "over capacity", "past context", "wafer too small", "target", "vocabulary"],
)
def test_bad_input_is_one_line_and_exit_2(args, message) -> None:
    result = cgc("generate", "tiny-111m", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.output


def test_check_generate_refuses_report_files(tmp_path) -> None:
    result = cgc("check", "tiny-111m", "--generate", "2", "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --json and --junit do not apply to --generate; drop them"
    )
    assert not (tmp_path / "r.json").exists()


def test_a_model_that_is_not_causal_is_refused(tmp_path) -> None:
    path = tmp_path / "model.py"
    path.write_text(NOT_CAUSAL)
    result = cgc("generate", str(path), "--prompt", "0", "--max-new-tokens", "2")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: kv-cache: attention at ")
    assert result.stderr.strip().endswith("is not causal; cannot derive a cached decoder")
