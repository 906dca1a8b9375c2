"""Checks that an adapter_config.json is one PEFT's LoraConfig accepts, by reading PEFT's own
source (installed without torch, which importing it would need): every key must be a field of
LoraConfig or its PeftConfig bases, and peft_type/task_type must be members of PEFT's enums.

Usage: python peft_config_check.py ADAPTER_DIR
"""

import ast
import importlib.util
import json
import sys
from pathlib import Path


def dataclass_fields(path, class_names):
    tree = ast.parse(Path(path).read_text())
    fields = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in class_names:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    fields.add(item.target.id)
    return fields


def enum_members(path, class_name):
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {t.id for item in node.body if isinstance(item, ast.Assign) for t in item.targets if isinstance(t, ast.Name)}
    return set()


spec = importlib.util.find_spec("peft")
if spec is None or not spec.submodule_search_locations:
    sys.exit("peft is not installed")
root = Path(list(spec.submodule_search_locations)[0])
fields = dataclass_fields(root / "tuners" / "lora" / "config.py", {"LoraConfig"})
fields |= dataclass_fields(root / "config.py", {"PeftConfig", "PeftConfigMixin"})
if len(fields) < 20:
    sys.exit(f"found only {len(fields)} LoraConfig fields; PEFT's layout changed")
config = json.loads((Path(sys.argv[1]) / "adapter_config.json").read_text())
unknown = sorted(set(config) - fields)
if unknown:
    sys.exit(f"keys PEFT's LoraConfig does not have: {unknown}")
peft_types = enum_members(root / "utils" / "peft_types.py", "PeftType")
task_types = enum_members(root / "utils" / "peft_types.py", "TaskType")
if config["peft_type"] not in peft_types or config["task_type"] not in task_types:
    sys.exit(f"peft_type {config['peft_type']} or task_type {config['task_type']} unknown to PEFT")
for key, kind in [("r", int), ("lora_alpha", (int, float)), ("target_modules", (list, str)), ("use_rslora", bool)]:
    if not isinstance(config[key], kind):
        sys.exit(f"{key} has type {type(config[key]).__name__}")
print(f"adapter_config.json accepted: {len(config)} keys, all LoraConfig fields")
