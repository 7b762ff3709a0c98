"""Issue 16, section 3: a --torch_compile run's model.safetensors carries the plain module's names, so
lab2-eval and lab2-predict take that run's own model (they build the plain model, without `_orig_mod.`)."""

import torch
from accelerate import Accelerator
from torch._dynamo.eval_frame import OptimizedModule

from lab2.models import create_model
from lab2.state.checkpoint import export_model
from lab2.state.model_file import load_exported_model, read_exported_model, save_model_file

METADATA = {"model": "simple_cnn", "num_classes": 10}


def test_a_compiled_model_is_exported_under_the_plain_module_names(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = create_model("simple_cnn", 10)
    compiled = torch.compile(model)  # compiles at its first call, which this test never makes
    assert isinstance(compiled, OptimizedModule) and all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    export_model(accelerator, compiled, tmp_path / "model.safetensors", METADATA)
    state, _ = read_exported_model(tmp_path / "model.safetensors")
    assert set(state) == set(model.state_dict())  # was: every name prefixed with _orig_mod.
    loaded = load_exported_model(tmp_path)  # what lab2-eval and lab2-predict call
    assert torch.equal(loaded.model.fc2.weight, model.fc2.weight)


def test_an_older_prefixed_export_still_loads(tmp_path):
    model = create_model("simple_cnn", 10)
    prefixed = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    save_model_file(prefixed, tmp_path / "model.safetensors", METADATA)
    loaded = load_exported_model(tmp_path / "model.safetensors")
    assert torch.equal(loaded.model.conv1.weight, model.conv1.weight)
