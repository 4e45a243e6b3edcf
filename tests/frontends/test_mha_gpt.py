"""A hand-written GPT on nn.MultiheadAttention: its bmm-form projections become `linear`, and
it runs, generates and trains as eager PyTorch does."""

from click.testing import CliRunner
from zoo import mha_gpt

from cgc import driver
from cgc.cli import main

MODEL = mha_gpt.__file__


def test_projections_fuse_into_linear() -> None:
    module, inputs = mha_gpt.get_model()
    graph = driver.run_passes(driver.trace(module, inputs), "default")
    assert graph.op_counts() == {
        "add": 5,
        "attention": 2,
        "embedding": 1,
        "gelu": 2,
        "layer_norm": 5,
        "linear": 9,
        "reshape": 28,
        "slice": 6,
        "transpose": 20,
    }


def test_checks_pass_for_inference_generation_and_training() -> None:
    for mode in ([], ["--generate", "8"], ["--train", "--steps", "2"]):
        result = CliRunner().invoke(main, ["check", MODEL, *mode])
        assert result.exit_code == 0, result.output
        assert result.output.rstrip().endswith("PASS"), mode
