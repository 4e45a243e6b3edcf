"""Every built-in tiny model round-trips through the text form, before and after the passes."""

import pytest

import cgc
from cgc import models
from cgc.ir import parse, verify


@pytest.mark.parametrize("name", sorted(models.TINY))
def test_parse_print_is_identity(name: str) -> None:
    module = models.build(name)
    graph = cgc.trace(module, models.example_inputs(module.config, 2, 8))
    for stage in (graph, cgc.run_passes(graph, "default")):
        text = str(stage)
        again = parse(text)
        verify(again)
        assert str(again) == text
