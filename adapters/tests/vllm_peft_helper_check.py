"""Runs vLLM's own adapter-config code on adapters HexaCoder wrote: `PEFTHelper` (parsing,
feature validation, per-module rank and scaling) and `parse_fine_tuned_lora_name` (tensor
names). Importing vLLM needs torch and a GPU build, so only those pieces are loaded from the
source of vLLM's wheel; the two imports `peft_helper.py` makes besides (its logger and the
`LoRAConfig` it reads `max_lora_rank` from) are replaced by minimal stand-ins.

Usage: python vllm_peft_helper_check.py VLLM_SRC EXPECTED_JSON
    VLLM_SRC holds vllm/lora/peft_helper.py and vllm/lora/utils.py from the wheel.
    EXPECTED_JSON: {"max_lora_rank": N, "adapters": {DIR: {MODULE: [rank, scale]}}}
"""

import ast
import dataclasses
import importlib.util
import json
import logging
import math
import struct
import sys
import types
from pathlib import Path


def stub_vllm():
    @dataclasses.dataclass
    class LoRAConfig:
        max_lora_rank: int

    logger = logging.getLogger("vllm")
    logger.info_once = logger.info
    for name in ["vllm", "vllm.config", "vllm.config.lora", "vllm.logger", "vllm.lora"]:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["vllm.config.lora"].LoRAConfig = LoRAConfig
    sys.modules["vllm.logger"].init_logger = lambda _name: logger
    return LoRAConfig


def load_peft_helper(src):
    path = Path(src) / "vllm/lora/peft_helper.py"
    spec = importlib.util.spec_from_file_location("vllm.lora.peft_helper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PEFTHelper


def load_name_parser(src):
    """`parse_fine_tuned_lora_name` alone: utils.py imports torch at the top."""
    tree = ast.parse((Path(src) / "vllm/lora/utils.py").read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parse_fine_tuned_lora_name")
    namespace = {}
    exec(compile(ast.Module(body=[func], type_ignores=[]), "utils.py", "exec"), namespace)
    return namespace["parse_fine_tuned_lora_name"]


def tensor_shapes(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    return {name: info["shape"] for name, info in header.items()}


def main():
    src, expected_path = sys.argv[1], sys.argv[2]
    LoRAConfig = stub_vllm()
    PEFTHelper = load_peft_helper(src)
    parse_name = load_name_parser(src)
    expected = json.loads(Path(expected_path).read_text())
    for adapter_dir, modules in expected["adapters"].items():
        helper = PEFTHelper.from_local_dir(adapter_dir, max_position_embeddings=4096)
        helper.validate_legal(LoRAConfig(max_lora_rank=expected["max_lora_rank"]))
        ranks = {}
        for name, shape in tensor_shapes(Path(adapter_dir) / "adapter_model.safetensors").items():
            module, is_a = parse_name(name)
            rank = shape[0] if is_a else shape[1]
            ranks.setdefault(module, {})["A" if is_a else "B"] = rank
        assert set(ranks) == set(modules), f"{adapter_dir}: vLLM sees modules {sorted(ranks)}"
        for module, (rank, scale) in modules.items():
            assert ranks[module] == {"A": rank, "B": rank}, f"{module}: {ranks[module]} != {rank}"
            vllm_rank, vllm_scale = helper.get_rank_and_scaling(module)
            assert vllm_rank == rank, f"{module}: vLLM rank {vllm_rank}, ours {rank}"
            assert math.isclose(vllm_scale, scale, rel_tol=1e-9), f"{module}: vLLM scale {vllm_scale}, ours {scale}"
        print(f"ok: vLLM's PEFTHelper accepts {adapter_dir} ({len(modules)} modules, same ranks and scales)")


if __name__ == "__main__":
    main()
