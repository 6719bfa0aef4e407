"""The bench: tools by name, passed as keyword arguments; subclasses add their own."""

from __future__ import annotations

import pytest

from arrakis.bench import BaseInterpretabilityBench
from arrakis.tools import BaseInterpretabilityTool, WriteReadAnalyzer
from tests.conftest import shared


class CountingTool(BaseInterpretabilityTool):
    name = "counting"
    built = 0

    def __init__(self, model):
        super().__init__(model)
        type(self).built += 1

    def n_layers(self) -> int:
        return self.model.cfg.n_layers


def test_use_tools_passes_each_tool_by_name():
    bench = BaseInterpretabilityBench(shared("gpt2"))

    @bench.use_tools("write_read")
    def experiment(layer, write_read):
        assert isinstance(write_read, WriteReadAnalyzer) and write_read.model is bench.model
        return write_read.identify_write_heads(layer)

    assert experiment(1) == WriteReadAnalyzer(bench.model).identify_write_heads(1)
    assert experiment.__name__ == "experiment"


def test_subclasses_add_tools_built_once_on_first_use():
    class Experiment(BaseInterpretabilityBench):
        def __init__(self, model, save_dir="experiments"):
            super().__init__(model, save_dir)
            self.tools.update({"counting": CountingTool})

    bench = Experiment(shared("gpt2"))
    CountingTool.built = 0

    @bench.use_tools("counting", "write_read")
    def experiment(counting, write_read):
        return counting.n_layers(), type(write_read).__name__

    assert experiment() == (2, "WriteReadAnalyzer")
    assert experiment() == (2, "WriteReadAnalyzer")
    assert CountingTool.built == 1


def test_unknown_tools_are_refused_with_the_registered_names(tmp_path):
    bench = BaseInterpretabilityBench(shared("gpt2"), save_dir=tmp_path / "runs")
    with pytest.raises(KeyError, match="no tool named 'write_reed'; registered tools: write_read"):
        bench.use_tools("write_reed")
    assert not (tmp_path / "runs").exists()  # nothing is written before a run is logged
    with pytest.raises(TypeError, match="needs a HookedAutoModel"):
        BaseInterpretabilityBench("gpt2")


def test_the_original_example_runs_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = """
import torch
from arrakis.src.core_arrakis.activation_cache import *
from arrakis.src.bench.base_bench import BaseInterpretabilityBench

config = HookedAutoConfig(name="llama")
model = HookedAutoModel(config)
input_ids = torch.randint(0, 50256, (1, 50))

class MIExperiment(BaseInterpretabilityBench):
    def __init__(self, model, save_dir="experiments"):
        super().__init__(model, save_dir)

exp = MIExperiment(model)

@exp.use_tools("write_read")
def test_read_write(src_idx, write_read):
    write_heads = write_read.identify_write_heads(0)
    read_heads = write_read.identify_read_heads(1, dim_idx=src_idx)
    return {"write_heads": write_heads, "read_heads": read_heads}

test_read_write(0)
"""
    namespace: dict = {}
    exec(compile(example, "example.py", "exec"), namespace)
    result = namespace["test_read_write"](0)
    write_heads, read_heads = result["write_heads"], result["read_heads"]
    assert all(isinstance(h, tuple) and h[0] == 0 for h in write_heads) and write_heads.covered() >= 0.8
    assert all(h[0] == 1 for h in read_heads) and read_heads.extra["dim"] == "e_0"
    from arrakis.src.core_arrakis.read_write_heads import WriteReadAnalyzer as Compat

    assert Compat is WriteReadAnalyzer
