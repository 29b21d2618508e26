"""The group measurement stage: every candidate of a (model, task) group timed in one process, interleaved.

Usage:
    doc = measure_group(group="...", run_ids=[...], out_dir=Path("runs/demo"), device="cpu")
    results.stage_is_current(out_dir, group, run_ids)     # measured already, for exactly these successes
(the runner starts it in a process of its own after the group's runs: ``peftbench.run.stage``)

Timing each run in its own process at its own moment turns a change of the machine's load between two
runs into a "winner" (an A/A pair once read +187 %). Here one process loads the base once and builds
every candidate of the group: the base (the zero-shot run), each adapter unmerged and merged, each full
fine-tuned checkpoint. After a warm-up of each, it times them in rounds: every candidate once per round
in an order shuffled per round (seeded), a short block of timed calls per scenario, the same inputs and
new-token count for all. The base's forward is also timed as a fixed **reference** in every round; its
spread across rounds says how steady the machine was (``noisy`` past ``NOISY_SPREAD``). Comparisons pair
candidates round by round (``stats.compare_rounds``): drift between rounds moves both sides and cancels.

Writes ``measurements/<group>.json`` (``results.STAGE_SCHEMA``): the candidates, every round's timings, the order and
its seed, the reference and its spread, the environment, and for each run the inference record the
report reads (the shape a run's own ``inference`` section has).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from peftbench import results
from peftbench.catalog import methods, models
from peftbench.catalog.methodspecs import traits
from peftbench.deploy.targets import TARGETS
from peftbench.measure.deployed import checks, deploy_candidates, rescore
from peftbench.measure.inference import _gen_kwargs, make_inputs
from peftbench.measure.latency import Latency, measure_latency
from peftbench.measure.memory import MemoryTracker, tensor_bytes
from peftbench.spec.config import MeasureArgs, ModelArgs

ORDER_SEED = 20261201  # the rounds' order: fixed, so a rerun of the stage shuffles alike
BLOCK_WARMUP = 1  # an untimed call after each switch of candidate (caches refilled by another model)
# Reference spread (geometric stdev of its per-round medians, less one) above which the group is noisy.
# On the 2-core CPU box, default rounds and blocks: quiet 5.5 % (tiny-gpt2) and 5.3 % (gpt2, 32 tokens);
# one process spinning beside the stage: 1,352 % (tiny-gpt2; torch's two threads lose a core), 16 % (gpt2). 10 %
# separates the two; paired effects stay valid on a noisy machine (the drift cancels round by round),
# only less precise, which their intervals show.
NOISY_SPREAD = 0.10


@dataclass
class Candidate:
    name: str  # the run id, "<run id>:merged", or "reference"
    run_id: str | None
    role: str  # base | unmerged | merged | full | reference | deployed
    model: torch.nn.Module
    device: torch.device | None = None  # where its calls run (None: the stage's device)
    resident: int | None = None  # bytes it holds before a call (None: its tensors)
    target: str = "torch"


def _load_candidates(runs: list[results.Result], *, out_dir: Path, device: torch.device, args: MeasureArgs):
    """The base once, then each run's candidates on copies of it (a merge or an adapter changes its copy)."""
    first = runs[0].config["model"]
    margs = ModelArgs(**{k: v for k, v in first.items() if k in ModelArgs.__dataclass_fields__})
    loaded = models.load(margs, seed=margs.seed, device=device)
    dtype = models.resolve_dtype(args.dtype, device, inference=True)
    base = loaded.model.to(device).eval()
    methods.cast(base, dtype)
    cands, notes, aliases, seen = [Candidate("reference", None, "reference", base)], {}, {}, {}
    for r in runs:
        method = traits(r.config["method"]["name"])
        folder = Path(out_dir) / "adapters" / r.run_id
        same = seen.setdefault(_fingerprint(folder, merged=args.merged and method.trains), r.run_id)
        if same != r.run_id:  # bit-identical to a candidate already built: timed once, reported for both
            aliases[r.run_id] = same
            continue
        if not method.trains:
            cands.append(Candidate(r.run_id, r.run_id, "base", base))
        elif method.trains_base:
            model = models._auto_class(loaded.family).from_pretrained(folder, dtype=dtype).to(device).eval()
            cands.append(Candidate(r.run_id, r.run_id, "full", model))
        else:
            from peft import PeftModel

            model = PeftModel.from_pretrained(copy.deepcopy(base), folder).to(device).eval()
            methods.cast(model, dtype)
            cands.append(Candidate(r.run_id, r.run_id, "unmerged", model))
            merged, notes[r.run_id] = methods.merge(copy.deepcopy(model)) if args.merged else (model, None)
            if args.merged and notes[r.run_id] is None:  # a refusal hands back the unmerged copy
                cands.append(Candidate(f"{r.run_id}:merged", r.run_id, "merged", merged.eval()))
    return loaded, cands, notes, aliases


def _fingerprint(folder: Path, *, merged: bool) -> str:
    """What a candidate is: the bytes of its adapter or checkpoint files (none for the base). Two runs
    whose files are equal (an A/A pair, the same seed) are one model: timing it twice would only turn
    noise into a difference between identical configurations."""
    import hashlib

    h = hashlib.sha256(str(merged).encode())
    for f in sorted(folder.glob("*")) if folder.is_dir() else []:
        data = f.read_bytes()
        if f.suffix == ".json":  # peft writes target_modules from a set: its order follows the hash seed
            data = json.dumps(_canonical(json.loads(data)), sort_keys=True).encode()
        h.update(f.name.encode() + data)
    return h.hexdigest()


def _canonical(value):
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return [_canonical(v) for v in value] if isinstance(value, list) else value


def _scenarios(args: MeasureArgs, *, family: str, vocab: int, pad_id, device) -> dict:
    """name -> a call of a model, at the group's fixed shapes (the same inputs for every candidate)."""
    dec = args.decoder_len or args.seq_len
    out = {}
    for b in dict.fromkeys([args.batch_size] + ([args.large_batch_size] if args.large_batch_size else [])):
        inputs = make_inputs(
            family=family, vocab_size=vocab, batch=b, seq_len=args.seq_len, decoder_len=dec, device=device
        )
        gen = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
        out[f"forward_b{b}"] = lambda m, i=inputs: m(**i)
        if args.generate:
            n = args.new_tokens
            out[f"generate_b{b}"] = lambda m, g=gen, n=n: m.generate(**g, **_gen_kwargs(n, pad_id))
            out[f"first_token_b{b}"] = lambda m, g=gen: m.generate(**g, **_gen_kwargs(1, pad_id))
    return out


@torch.inference_mode()
def _warm_and_peak(cands: list[Candidate], by_device: dict, *, args: MeasureArgs, device) -> dict:
    """Every candidate's warm-up calls, then each one's peak memory over one call of every scenario (after
    all the warm-ups, so no candidate pays for the process's first-touch allocations: measured during
    its own warm-up, the first one read twice the others')."""
    for c in cands:
        for fn in by_device[str(c.device or device)].values():
            for _ in range(max(1, args.warmup)):
                fn(c.model)
    peaks = {}
    for c in cands:
        resident = tensor_bytes(c.model) if c.resident is None else c.resident
        with MemoryTracker(c.device or device, resident_bytes=resident) as mem:
            for fn in by_device[str(c.device or device)].values():
                fn(c.model)
        peaks[c.name] = mem.result.to_dict()
        # every candidate sits on the device together: its own weights plus what its calls added
        peaks[c.name]["peak_bytes"] = resident + peaks[c.name]["delta_bytes"]
    return peaks


@torch.inference_mode()
def _rounds(cands: list[Candidate], by_device: dict, *, args: MeasureArgs, device, progress=None) -> dict:
    """``args.rounds`` rounds, the candidates in a fresh seeded order each; per candidate and scenario a
    block of ``args.block_iterations`` timed calls after ``BLOCK_WARMUP`` untimed ones."""
    rng = random.Random(ORDER_SEED)
    timings = {s: {c.name: [] for c in cands} for s in by_device[str(device)]}
    orders = []
    for r in range(args.rounds):
        order = list(cands)
        rng.shuffle(order)
        orders.append([c.name for c in order])
        for c in order:
            for s, fn in by_device[str(c.device or device)].items():
                if c.role == "reference" and not s.startswith(f"forward_b{args.batch_size}"):
                    continue  # the reference is one workload: the base's forward at the latency shape
                lat = measure_latency(
                    lambda fn=fn, m=c.model: fn(m),
                    device=c.device or device,
                    warmup=BLOCK_WARMUP,
                    iterations=args.block_iterations,
                    min_seconds=0.0,
                )
                timings[s][c.name].append(lat.samples_ms)
        if progress:
            progress(r + 1)
    return {"timings": timings, "orders": orders}


def reference_spread(per_round_ms: list[list[float]]) -> float:
    """The reference's relative spread across rounds: the geometric standard deviation of its per-round
    medians, less one (0.03: a round is typically 3 % off the others)."""
    logs = [math.log(statistics.median(r)) for r in per_round_ms if r]
    return math.expm1(statistics.stdev(logs)) if len(logs) > 1 else 0.0


def _latency(rounds_ms: list[list[float]]) -> dict:
    return Latency.from_values([ms / 1000 for block in rounds_ms for ms in block]).to_dict()


def _inference_of(name: str, doc: dict, *, args: MeasureArgs, family: str) -> dict:
    """One candidate's numbers in the shape of a run's ``inference`` section (every timed call pooled)."""
    timings, scen = doc["timings"], {}
    for s, rounds in timings.items():
        if not rounds.get(name):
            continue
        lat = _latency(rounds[name])
        b = int(s.rsplit("_b", 1)[1])
        if s.startswith("forward"):
            tokens = b * (args.seq_len + ((args.decoder_len or args.seq_len) if family == "seq2seq" else 0))
            scen[s] = {"batch_size": b, "seq_len": args.seq_len, "latency_ms": lat}
            scen[s]["tokens_per_second"] = round(tokens / (lat["mean_ms"] / 1000), 3)
        elif s.startswith("generate"):
            first = _latency(timings[f"first_token_b{b}"][name])
            per_token = (lat["mean_ms"] - first["mean_ms"]) / max(1, args.new_tokens - 1)
            scen[s] = {
                "batch_size": b,
                "seq_len": args.seq_len,
                "new_tokens": args.new_tokens,
                "time_to_first_token_ms": first,
                "latency_ms": lat,
                "time_per_output_token_ms": round(per_token, 4),
                "tokens_per_second": round(b * args.new_tokens / (lat["mean_ms"] / 1000), 3),
            }
    head, large = f"_b{args.batch_size}", f"_b{args.large_batch_size}"
    gen = scen.get(f"generate{head}")
    dtype = next(c["dtype"] for c in doc["candidates"] if c["name"] == name)
    return {
        "dtype": dtype,
        "shapes": {
            "batch_size": args.batch_size,
            "large_batch_size": args.large_batch_size,
            "seq_len": args.seq_len,
            "decoder_len": (args.decoder_len or args.seq_len) if family == "seq2seq" else None,
            "new_tokens": args.new_tokens,
        },
        "latency_ms": scen[f"forward{head}"]["latency_ms"],
        "throughput_tokens_per_second": (gen or scen[f"forward{head}"])["tokens_per_second"],
        "throughput_unit": "generated tokens/s" if gen else "forward tokens/s",
        "throughput_large_batch_tokens_per_second": (
            scen.get(f"generate{large}") or scen.get(f"forward{large}") or {}
        ).get("tokens_per_second"),
        "time_to_first_token_ms": gen["time_to_first_token_ms"] if gen else None,
        "time_per_output_token_ms": gen["time_per_output_token_ms"] if gen else None,
        "peak_memory_bytes": doc["memory"][name]["peak_bytes"],
        "memory": doc["memory"][name],
        "scenarios": scen,
        "stage": {"candidate": name},
    }


def round_medians(doc: dict, scenario: str, name: str) -> list[float]:
    """A candidate's median per round in one scenario: the values paired comparisons take."""
    return [statistics.median(block) for block in doc["timings"][scenario][name]]


def _run_inference(doc: dict, run_id: str, *, args: MeasureArgs, family: str, notes: dict) -> dict:
    """A run's inference record from the stage: its candidate, and its merged one where it merged, with
    the unmerged overhead paired round by round."""
    from peftbench import stats

    timed = doc["aliases"].get(run_id, run_id)
    names = {c["role"]: c["name"] for c in doc["candidates"] if c["run_id"] == timed}
    main = names.get("unmerged") or names.get("base") or names.get("full")
    inf = _inference_of(main, doc, args=args, family=family)
    inf["merged"], inf["merge_note"] = None, notes.get(timed)
    if "merged" in names:
        m = _inference_of(names["merged"], doc, args=args, family=family)
        m.pop("shapes")
        fwd = f"forward_b{args.batch_size}"
        c = stats.compare_rounds(round_medians(doc, fwd, main), round_medians(doc, fwd, names["merged"]))
        m["unmerged_overhead_percent"] = round(c.effect, 3)
        m["unmerged_overhead_ci95"] = [round(c.low, 3), round(c.high, 3)]
        m["max_abs_logit_diff"] = next(
            x["max_abs_logit_diff"] for x in doc["candidates"] if x["name"] == names["merged"]
        )
        inf["merged"] = m
    inf["stage"] = {"file": f"measurements/{doc['group']}.json", "candidate": main}
    inf["deploy"] = {
        target: _deployed_of(recs[timed], doc, args=args, family=family)
        for target, recs in (doc.get("deploy") or {}).items()
        if timed in recs
    }
    return inf


def _deployed_of(rec: dict, doc: dict, *, args: MeasureArgs, family: str) -> dict:
    """A run's numbers on one deployment target: what was built (or why not), its timings from the rounds."""
    out = dict(rec)
    name = rec.get("candidate")
    if name and doc["timings"][f"forward_b{args.batch_size}"].get(name):
        numbers = _inference_of(name, doc, args=args, family=family)
        numbers.pop("shapes")
        out.update(numbers)
    return out


@torch.inference_mode()
def _logit_diffs(cands: list[Candidate], scenarios: dict, *, args: MeasureArgs) -> dict:
    """Merged against unmerged logits at the latency shape: the merge is the same function."""
    fn = scenarios[f"forward_b{args.batch_size}"]
    by_name = {c.name: c for c in cands}
    return {
        c.name: float((fn(by_name[c.run_id].model).logits.float() - fn(c.model).logits.float()).abs().max())
        for c in cands
        if c.role == "merged"
    }


def measure_group(*, group: str, run_ids: list[str], out_dir: Path, device: str, progress=None) -> dict | None:
    """Measure the group's successful runs together and write ``measurements/<group>.json``."""
    runs = [r for r in (results.read_result(results.result_path(out_dir, i)) for i in run_ids) if r]
    runs = [r for r in runs if r.status == "success"]
    if not runs:
        return None
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    args = MeasureArgs(**{k: v for k, v in runs[0].config["measure"].items() if k in MeasureArgs.__dataclass_fields__})
    torch.manual_seed(0)
    loaded, cands, notes, aliases = _load_candidates(runs, out_dir=out_dir, device=dev, args=args)
    vocab, family = loaded.model.config.vocab_size, loaded.family
    scen = functools.partial(_scenarios, args, family=family, vocab=vocab, pad_id=loaded.tokenizer.pad_token_id)
    folder = results.stage_path(out_dir, group).parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".deploy-", dir=folder) as tmp:
        built, deploy = deploy_candidates(cands, runs, args=args, family=family, aliases=aliases, workdir=Path(tmp))
        timed = cands + [
            Candidate(b.name, b.run_id, "deployed", b.model, device=b.device, resident=b.resident, target=b.target)
            for b in built
        ]
        by_device = {str(d): scen(device=d) for d in {dev, *(b.device for b in built)}}
        fwd = f"forward_b{args.batch_size}"  # the built models checked against their sources at the latency shape
        checks(built, cands, forward=lambda m: by_device[str(_device_of(m))][fwd](m))
        started = time.time()
        memory = _warm_and_peak(timed, by_device, args=args, device=dev)
        measured = _rounds(timed, by_device, args=args, device=dev, progress=progress)
        diffs = _logit_diffs(cands, by_device[str(dev)], args=args)
        rescore(built, runs, loaded=loaded, family=family)
    doc = _document(group, runs, timed, dev=dev, args=args, started=started, diffs=diffs, aliases=aliases)
    doc.update(memory=memory, deploy=deploy, **measured)
    spread = reference_spread(measured["timings"][f"forward_b{args.batch_size}"]["reference"])
    doc["reference"] = {"scenario": f"forward_b{args.batch_size}", "spread": round(spread, 5)}
    doc.update(noisy=spread > NOISY_SPREAD, noisy_threshold=NOISY_SPREAD)
    doc["inference"] = {r.run_id: _run_inference(doc, r.run_id, args=args, family=family, notes=notes) for r in runs}
    results.write_json_atomic(results.stage_path(out_dir, group), doc)
    return doc


def _device_of(model) -> torch.device:
    """Where a candidate's calls run, as the stage names devices (``cuda``, ``cpu``): its weights' device type
    (CPU for an ONNX Runtime session, which has none)."""
    p = next(model.parameters(), None)
    return torch.device(p.device.type) if p is not None else torch.device("cpu")


def _dtype_of(c: Candidate) -> str:
    if c.target != "torch":
        return TARGETS[c.target].weights
    return str(next(c.model.parameters()).dtype).replace("torch.", "")


def _document(group, runs, cands, *, dev, args, started, diffs, aliases) -> dict:
    return {
        "schema": results.STAGE_SCHEMA,
        "group": group,
        "device": str(dev),
        "env": results.capture_env(str(dev)),
        "started_at": results.timestamp(started),
        "finished_at": results.now(),
        "order_seed": ORDER_SEED,
        "rounds": args.rounds,
        "block_iterations": args.block_iterations,
        "runs": {r.run_id: {"config_hash": r.config_hash, "attempt": r.attempt} for r in runs},
        "candidates": [
            {
                "name": c.name,
                "run_id": c.run_id,
                "role": c.role,
                "target": c.target,
                "device": str(c.device or dev),
                "dtype": _dtype_of(c),
                "max_abs_logit_diff": diffs.get(c.name),
            }
            for c in cands
        ],
        "aliases": aliases,
    }
