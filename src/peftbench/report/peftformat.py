"""peft's method-comparison format, in and out.

Usage:
    suite, notes = import_peft(Path("peft/method_comparison/MetaMathQA"))   # -> a suite mapping (write it as YAML)
    written = export_peft(Path("runs/x"), Path("runs/x/peft-results"))       # -> one peft result JSON per run

In: a folder of peft experiments (``experiments/<method>/<name>/adapter_config.json`` and/or
``training_params.json`` over ``default_training_params.json``; full fine-tuning has no adapter config) becomes one
peftbench experiment each, id ``<method>--<name>`` (peft's own result-file name), the method given as the adapter
file itself (``method: {peft_config: ...}``) and the training parameters mapped to peftbench's (steps, batch,
learning rate, weight decay, clipping, schedule, seed, evaluation interval, sequence length, weights dtype and
autocast). What peftbench cannot
express is said, not hidden: an experiment with another optimizer than AdamW (LoRA-FA, Riemannian LoRA) is left out
with the reason; ``autocast_adapter_dtype: false``, the generation settings and any other key not carried over
(prefix tuning's ``init_kv_cache_prefix``, say) are noted.

Out: each successful run as peft's result layout (``run_info`` / ``train_info`` / ``meta_info``) with the fields
that apply: the train config, the adapter's saved config, training time, peak memory, the adapter file's size (the
weights file, as peft counts it), trainable and total parameters, the loss and validation curves and the test
score, the package versions and the system.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftbench.errors import ConfigError
from peftbench.results import load_results, write_text_atomic
from peftbench.spec.config import read_peft_file

# peft's run.py merges an experiment's parameters over the defaults one level deep (its optimizer_kwargs replace the
# defaults' whole), builds torch's AdamW from them (weight decay 0.01 where they leave it out) and warms up for a
# tenth of the steps
TORCH_ADAMW_WEIGHT_DECAY = 0.01
PEFT_WARMUP_RATIO = 0.1
MAPPED = {"model_id", "dtype", "max_seq_length", "batch_size", "max_steps", "eval_steps", "compile", "seed",
          "grad_norm_clip", "optimizer_type", "optimizer_kwargs", "lr_scheduler", "use_amp"}  # fmt: skip
NOTED = {"autocast_adapter_dtype", "generation_kwargs", "query_template", "batch_size_eval", "max_generation_length",
         "attn_implementation"}  # fmt: skip
DTYPES = {"float32", "bfloat16", "float16"}
PEFT_FOLDERS = {"full": "full-finetuning"}  # peftbench's method name -> peft's experiments/<folder>
PACKAGES = ("transformers", "peft", "datasets", "torch", "accelerate", "peftbench")
PEFT_ADAMW = {None, "AdamW", "adamw", "torch.optim.AdamW"}
DEFAULT_DATA = {  # peft trains on MetaMathQA and scores GSM8K answers by generation; here: the answers, by ROUGE
    "spec": "hf:meta-math/MetaMathQA",
    "task": "summarization",
    "fields": {"source": "query", "target": "response"},
}


def _read(path: Path) -> dict:
    """A peft parameters file as a dict; {} where the folder has none (its defaults apply)."""
    if not path.is_file():
        return {}
    try:
        return read_peft_file(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON object ({type(e).__name__}: {e})"[:300]) from None


def experiment_dirs(root: Path) -> list[Path]:
    """peft experiment folders under ``root`` (its ``experiments/`` or ``root`` itself): method/name pairs."""
    base = root / "experiments" if (root / "experiments").is_dir() else root
    found = {p.parent for pat in ("*/*/adapter_config.json", "*/*/training_params.json") for p in base.glob(pat)}
    return sorted(found)


def train_section(params: dict) -> tuple[dict, dict, list[str]]:
    """peft's training parameters -> (peftbench train section, data section, notes on what does not carry over)."""
    data, notes = {}, []
    opt = params.get("optimizer_kwargs") or {}
    pairs = [
        ("max_steps", params.get("max_steps")),
        ("batch_size", params.get("batch_size")),
        ("learning_rate", opt.get("lr")),
        ("weight_decay", opt.get("weight_decay", TORCH_ADAMW_WEIGHT_DECAY)),
        ("warmup_ratio", PEFT_WARMUP_RATIO),
        ("max_grad_norm", params.get("grad_norm_clip")),
        ("lr_scheduler", params.get("lr_scheduler")),
        ("seed", params.get("seed")),
        ("eval_steps", params.get("eval_steps")),
    ]
    train = {k: v for k, v in pairs if v is not None}
    if "compile" in params:
        train["compile"] = "model" if params["compile"] else "off"
    if "use_amp" in params or params.get("dtype"):
        train["mixed_precision"] = "bf16" if params.get("use_amp") else "no"  # peft: weights in `dtype`, no autocast
    if params.get("max_seq_length"):
        data["max_source_length"] = int(params["max_seq_length"])
    if params.get("autocast_adapter_dtype") is False:
        notes.append("autocast_adapter_dtype: false is not expressed (the adapter trains in peft's default dtype)")
    if params.get("generation_kwargs") or params.get("query_template"):
        notes.append("peft's query template and generation settings are not carried over (peftbench's task is used)")
    other = sorted(set(params) - MAPPED - NOTED)
    if other:
        notes.append(f"not carried over: {', '.join(other)}")
    return train, data, notes


def import_peft(root: Path, *, model: str | None = None, data: dict | None = None) -> tuple[dict, list[str]]:
    """A suite mapping for every experiment under ``root``; notes: what was left out or changed, and why."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"import-peft: {root}: no such folder")
    defaults = _read(root / "default_training_params.json")
    experiments, notes = [], []
    for folder in experiment_dirs(root):
        name = f"{folder.parent.name}--{folder.name}"
        params = defaults | _read(folder / "training_params.json")
        if params.get("optimizer_type") not in PEFT_ADAMW:
            notes.append(f"{name}: left out: optimizer_type {params['optimizer_type']!r} (peftbench trains with AdamW "
                         f"over every adapter parameter)")  # fmt: skip
            continue
        train, data_over, why = train_section(params)
        notes += [f"{name}: {w}" for w in why]
        adapter = folder / "adapter_config.json"
        method = {"peft_config": str(adapter.resolve())} if adapter.is_file() else {"name": "full"}
        spec = model or (f"hf:{params['model_id']}" if params.get("model_id") else None)
        if spec is None:
            raise ConfigError(f"import-peft: {folder}: no model_id in its training parameters (give --model)")
        model_section = {"spec": spec} | ({"dtype": params["dtype"]} if params.get("dtype") in DTYPES else {})
        exp = {"id": name.replace("+", "-"), "model": model_section, "method": method, "train": train}
        if data_over:
            exp["data"] = data_over
        experiments.append(exp)
    if not experiments:
        raise ConfigError(f"import-peft: {root}: no peft experiment (experiments/<method>/<name>/) found")
    suite = {
        "name": root.name.replace(" ", "-") or "peft",
        "description": f"imported from peft's experiments in {root} (peftbench import-peft)",
        "defaults": {"data": dict(data or DEFAULT_DATA)},
        "experiments": experiments,
    }
    return suite, notes


def _train_config(r: dict) -> dict:
    cfg = r.get("config") or {}
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    speed = (r.get("train") or {}).get("speed") or {}
    return {
        "model_id": (cfg.get("model") or {}).get("spec"),
        "dtype": (r.get("resolved") or {}).get("dtype"),
        "max_seq_length": data.get("max_source_length"),
        "batch_size": train.get("batch_size"),
        "max_steps": train.get("max_steps"),
        "eval_steps": train.get("eval_steps"),
        "compile": speed.get("compile", train.get("compile")) not in (None, "off"),
        "seed": train.get("seed"),
        "grad_norm_clip": train.get("max_grad_norm"),
        "optimizer_type": "AdamW",
        "optimizer_kwargs": {
            "lr": (r.get("train") or {}).get("learning_rate"),
            "weight_decay": train.get("weight_decay"),
        },
        "lr_scheduler": train.get("lr_scheduler"),
        "use_amp": train.get("mixed_precision") not in ("no", None),
        "autocast_adapter_dtype": True,
    }


def _metrics(r: dict) -> list[dict]:
    t = r.get("train") or {}
    losses = {p["step"]: p["loss"] for p in t.get("loss_curve") or []}
    rows = []
    for p in t.get("eval_curve") or []:
        row = {"step": p.get("step")} | {f"valid {k}": v for k, v in p.items() if k != "step"}
        if p.get("step") in losses:
            row["train loss"] = losses[p["step"]]
        rows.append(row)
    quality = {f"test {k}": v for k, v in (r.get("quality") or {}).items() if isinstance(v, (int, float))}
    if "test accuracy" in quality:  # peft's accuracy is a fraction, peftbench's a percentage
        quality["test accuracy"] = quality["test accuracy"] / 100.0
    final = {"step": t.get("steps"), **quality, "train loss": next(reversed(losses.values()), None)}
    final |= {"train samples": t.get("examples_seen"), "train total tokens": t.get("tokens")}
    return rows + [final]


def experiment_name(r: dict) -> str:
    """peft's ``<method>/<name>``: an imported experiment's own (its id is ``<method>--<name>``), else
    ``<method>/<peftbench id>``."""
    method = ((r.get("config") or {}).get("method") or {}).get("name") or "unknown"
    method = PEFT_FOLDERS.get(method, method)
    rid = r["id"]
    return rid.replace("--", "/", 1) if rid.startswith(f"{method}--") else f"{method}/{rid}"


def peft_result(r: dict, out_dir: Path) -> dict:
    """One peftbench result as peft's result JSON (the fields that apply)."""
    env, storage, t = r.get("env") or {}, r.get("storage") or {}, r.get("train") or {}
    adapter = out_dir / "adapters" / r["run_id"] / "adapter_config.json"
    weights = adapter.with_name("adapter_model.safetensors")
    size = storage.get("adapter_weights_bytes") or (weights.stat().st_size if weights.is_file() else None)
    return {
        "run_info": {
            "created_at": r.get("finished_at") or r.get("started_at"),
            "total_time": r.get("wall_seconds"),
            "experiment_name": experiment_name(r),
            "peft_branch": None,
            "train_config": _train_config(r),
            "peft_config": json.loads(adapter.read_text()) if adapter.is_file() else None,
            "error_msg": "" if r.get("status") == "success" else str(r.get("error") or ""),
        },
        "train_info": {
            "cuda_memory_max": t.get("peak_memory_bytes"),
            "train_time": t.get("seconds"),
            "file_size": size,  # the weights file, as peft counts it
            "num_trainable_params": (r.get("params") or {}).get("trainable"),
            "num_total_params": (r.get("params") or {}).get("total"),
            "status": r.get("status"),
            "metrics": _metrics(r),
        },
        "meta_info": {
            "package_info": {f"{k}-version": env.get(k) for k in PACKAGES if env.get(k)},
            "system_info": {"system": env.get("platform"), "gpu": env.get("device"), "node": env.get("node")},
        },
    }


def export_peft(out_dir: Path, dest: Path) -> list[Path]:
    """Every successful run of a study as ``dest/<method>--<name>.json`` in peft's result layout (seeds and rates
    of one experiment are runs of their own: their run ids name the files)."""
    out_dir = Path(out_dir)
    if not (out_dir / "results").is_dir():
        raise ConfigError(f"export-peft: {out_dir}: no results/ folder (not a peftbench output folder)")
    written = []
    for r in load_results(out_dir / "results"):
        if r.get("status") != "success":
            continue
        seed_or_rate = r["run_id"][len(r["id"]) :] if r["run_id"].startswith(r["id"]) else ""
        path = Path(dest) / (experiment_name(r).replace("/", "--", 1) + seed_or_rate + ".json")  # peft's file name
        write_text_atomic(path, json.dumps(peft_result(r, out_dir), indent=2, default=str) + "\n")
        written.append(path)
    return written
