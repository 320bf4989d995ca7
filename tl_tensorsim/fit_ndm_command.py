"""`tl-tensorsim fit-ndm`: fit an NDM subspace partition from the command line (the `tl_tensorsim.cli` subcommand;
see `FIT_NDM_HELP`). MODEL and DATA are loaded here (a saved folder, a project model or a TransformerLens name; an
activation store, `.npy` activations or token ids, text or a `datasets` name), the activations are collected into
OUT/activations, `OUT/data.json` records what chose them (a re-run on other data is refused), and `ndm.fit_ndm`
trains with checkpoints in OUT/checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIT_NDM_HELP = """Fit an NDM subspace partition (Huang & Hahn, arXiv 2508.01916) and save it to OUT/partition.

MODEL: a folder saved by the project (`tl-tensorsim train NAME --out DIR`, or any folder with cfg.json of a model
kind), a folder with config.json (TransformerLens config fields) and one .safetensors state dict, the name of a
project model (`tl-tensorsim train --list`), or a TransformerLens model name (from_pretrained; needs the hub).
DATA: an activation store folder (manifest.json; MODEL and HOOK then optional), a .npy file of activations
[n, d] (float) or token ids [n_seq, pos] (int), .txt files or a folder of them (tokenised with the model's
tokenizer, documents joined with EOS and cut into --seq-len sequences that start with BOS), or a `datasets` name.
OUT: activations/ (the collected store, reused when re-run), checkpoints/, partition/, data.json (what chose the
data). Re-running the same command resumes from the last checkpoint; a re-run into the same OUT with other data
(MODEL, HOOK, DATA or its contents, --positions, --keep-bos, --seq-len, --max-sequences, --split, --text-column)
is refused: use a new --out. Under torchrun every rank collects its share of the sequences and the fit is shared
(key pool sharded, gradient all-reduced); OUT must be visible to every rank."""


def _setting_flags(parser: argparse.ArgumentParser) -> list[str]:
    """One flag per field of `NDMSettings` (`--unit-size`, ...), typed from its annotation, default from the
    dataclass; returns the field names."""
    from tl_tensorsim.ndm.trainer import NDMSettings

    group = parser.add_argument_group("NDM settings (see fit_ndm's docstring)")
    hints = typing.get_type_hints(NDMSettings)
    names = []
    for f in dataclasses.fields(NDMSettings):
        kind = hints[f.name]
        if kind in (int, float, str):
            parse = kind
        else:  # tuple[int, ...] | None: comma-separated widths
            parse = _int_tuple
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"ndm_{f.name}", type=parse, default=default,
                           metavar=f.name.upper(), help=f"default {shown}")  # fmt: skip
        names.append(f.name)
    return names


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 64,32,32; got {text!r}") from None


def _positions(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or an int position (-1: the last); got {text!r}") from None


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an int >= `low` (`checks.checked_int`; `what`: the range in words, for the message)."""
    from tl_tensorsim.checks import checked_int

    def parse(text: str) -> int:
        try:
            return checked_int(int(text), "value", low, what)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None

    return parse


def fit_ndm_parser(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser("fit-ndm", help="fit an NDM subspace partition (resumable; torchrun for several processes)",
                         description=FIT_NDM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    fit.add_argument("model", nargs="?", metavar="MODEL", help="model folder or name (see above)")
    fit.add_argument("hook", nargs="?", metavar="HOOK", help="hook point, e.g. blocks.6.hook_resid_post")
    fit.add_argument("--data", required=True, metavar="DATA", help="activations, token ids, text or a dataset")
    fit.add_argument("--out", required=True, metavar="DIR", help="output folder (re-run to resume)")
    fit.add_argument("--positions", type=_positions, default=None, metavar="all|INT", help="positions (default all)")
    fit.add_argument("--keep-bos", action="store_true", help="also use position 0 (left out by default)")
    seq_len = _int_at_least(2, "an int from 2 (BOS and one token) to the model's n_ctx")
    fit.add_argument("--seq-len", type=seq_len, default=None, metavar="N", help="text: tokens per sequence (n_ctx)")
    fit.add_argument("--max-sequences", type=_int_at_least(1, "an int >= 1"), default=None, metavar="N",
                     help="use at most N sequences")  # fmt: skip
    positive = _int_at_least(1, "an int >= 1")
    fit.add_argument("--split", default="train", help="datasets: the split (default train)")
    fit.add_argument("--text-column", default="text", help="datasets: the text column (default text)")
    fit.add_argument("--collect-batch-size", type=positive, default=32, metavar="N", help="sequences per forward pass")
    fit.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    fit.add_argument("--checkpoint-every", type=positive, default=1000, metavar="N", help="steps between checkpoints")
    fit.add_argument("--log-every", type=positive, default=200, metavar="N", help="steps per history entry")
    fit.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads per process")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    _setting_flags(fit)


def _load_model(spec: str, device: Any) -> Any:
    """The model MODEL names (see FIT_NDM_HELP), on `device`."""
    import json

    from tl_tensorsim.adapter import ModelView
    from tl_tensorsim.artifacts import CONFIG_FILE
    from tl_tensorsim.model_io import model_kind
    from tl_tensorsim.models import registry

    path = Path(spec).expanduser()
    if not path.is_dir() and (path.exists() or _looks_like_path(spec)):
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ValueError(
            f"MODEL: {spec} {what}; expected a model folder (cfg.json, or config.json + one .safetensors file), a "
            "project model name (`tl-tensorsim train --list`) or a TransformerLens model name: check the path"
        )
    if path.is_dir():
        for folder in (path / registry.MODEL_FOLDER, path):
            if (folder / CONFIG_FILE).is_file():
                kind = json.loads((folder / CONFIG_FILE).read_text()).get("kind")
                load = registry.loader_for(kind)
                if load is None:
                    raise ValueError(f"MODEL: {folder} holds a {kind!r}, which no model of tl_tensorsim.models loads")
                return load(folder, device=device)
        weights = sorted(path.glob("*.safetensors"))
        if (path / "config.json").is_file() and len(weights) == 1:
            from safetensors.torch import load_file

            view = ModelView.build(json.loads((path / "config.json").read_text()), device=device)
            return view.load_state_dict(load_file(str(weights[0]))).model.eval()
        raise ValueError(
            f"MODEL: {path} holds neither a saved model ({CONFIG_FILE}) nor config.json + one .safetensors file"
        )
    if spec in {m.__name__.rsplit(".", 1)[-1] for m in registry.available()}:
        model = registry.get(spec).load_default(device=device)
    else:
        try:
            model = ModelView.from_pretrained(spec, device=device).model
        except Exception as exc:  # an unknown name, no hub, a bad repo id (OSError): one message naming MODEL
            text = str(exc).strip().split("\n")[0]
            text = text if len(text) <= 160 else text[:160] + " ..."
            raise ValueError(
                f"MODEL: could not load {spec!r}: it is no folder here, no project model (`tl-tensorsim train "
                f"--list`), and TransformerLens did not load it as a model name ({type(exc).__name__}: {text})"
            ) from exc
    if model_kind(model) is None:
        raise ValueError(f"MODEL: {spec!r} is not a TransformerLens model (got {type(model).__name__})")
    return model.eval()


def _looks_like_path(spec: str) -> bool:
    """Whether MODEL is written as a path (./x, ../x, /x, ~/x, x/y/z, x/, a backslash) rather than a model name
    (`gpt2`, `EleutherAI/pythia-70m`: at most one slash)."""
    return spec.startswith((".", "/", "~")) or spec.endswith("/") or spec.count("/") > 1 or "\\" in spec


def _tokenise(texts: list[str], model: Any, seq_len: int | None) -> Any:
    """Documents joined with EOS and cut into sequences of `seq_len` tokens, each starting with BOS (the paper's
    data pipeline)."""
    import torch

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("data: text needs the model's tokenizer, and this model has none; pass token ids (.npy)")
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    n_ctx = int(model.cfg.n_ctx)
    if seq_len is not None and seq_len > n_ctx:
        raise ValueError(f"--seq-len: expected an int from 2 to the model's n_ctx, {n_ctx}; got {seq_len}")
    seq_len = seq_len or n_ctx
    stream = [t for text in texts for t in [*tokenizer(text, add_special_tokens=False)["input_ids"], eos]]
    n = len(stream) // (seq_len - 1)
    if n == 0:
        raise ValueError(f"data: {len(stream)} tokens is less than one sequence of --seq-len {seq_len}")
    body = torch.tensor(stream[: n * (seq_len - 1)]).view(n, seq_len - 1)
    return torch.cat([torch.full((n, 1), bos), body], 1)


def _load_data(args: argparse.Namespace, model_of: Any) -> Any:
    """An ActivationStore, an activation tensor, or token ids `[n_seq, pos]` (calling `model_of()` for text)."""
    import numpy as np
    import torch

    from tl_tensorsim.activation_store import MANIFEST, ActivationStore

    path = Path(args.data)
    if (path / MANIFEST).is_file():
        return ActivationStore(path)
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="c")
        return torch.from_numpy(array) if array.dtype.kind == "f" else torch.from_numpy(np.asarray(array, np.int64))
    if path.is_dir() or path.suffix == ".txt":
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        return _tokenise([f.read_text() for f in files], model_of(), args.seq_len)
    import datasets

    try:
        ds = datasets.load_dataset(args.data, split=args.split)
    except Exception as exc:  # a missing path, an unknown name, no network: one message naming DATA
        raise ValueError(
            f"DATA: {args.data!r} is not an activation store, a .npy or .txt file or a folder here, and it did not "
            f"load as a `datasets` name ({type(exc).__name__}: {exc})"
        ) from exc
    if args.max_sequences is not None:
        ds = ds.select(range(min(args.max_sequences, len(ds))))
    for column in ("tokens", "input_ids"):
        if column in ds.column_names:
            return torch.tensor(ds[column])
    return _tokenise(list(ds[args.text_column]), model_of(), args.seq_len)


DATA_RECORD = "data.json"  # OUT/data.json: what chose the data of the run in OUT
_RECORD_NAMES = {"kind": "DATA's kind", "data": "--data", "model": "MODEL", "hook": "HOOK", "positions": "--positions",
                 "keep_bos": "--keep-bos", "max_sequences": "--max-sequences", "seq_len": "--seq-len",
                 "split": "--split", "text_column": "--text-column", "tokens": "DATA's token ids"}  # fmt: skip


def _identity(spec: str | None) -> str | None:
    """A MODEL or DATA as recorded: the absolute path of an existing file or folder, else the name as given."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _data_record(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that determine the rows a fit-ndm run in OUT trains on (those that matter for this DATA)."""
    import numpy as np

    from tl_tensorsim.activation_store import MANIFEST

    path = Path(args.data)
    if (path / MANIFEST).is_file():
        return {"kind": "activation store", "data": _identity(args.data)}
    if path.suffix == ".npy" and path.is_file():
        if np.load(path, mmap_mode="r").dtype.kind == "f":
            return {"kind": "activations (.npy)", "data": _identity(args.data)}
        kind = "token ids (.npy)"
    else:
        kind = "text" if path.is_dir() or path.suffix == ".txt" else "datasets name"
    record = {"kind": kind, "data": _identity(args.data), "model": _identity(args.model), "hook": args.hook,
              "positions": args.positions, "keep_bos": args.keep_bos, "max_sequences": args.max_sequences}  # fmt: skip
    if kind != "token ids (.npy)":
        record["seq_len"] = args.seq_len
    if kind == "datasets name":
        record.update(split=args.split, text_column=args.text_column)
    return record


def _shown(key: str, value: Any) -> str:
    if value is None:
        return {"positions": "all", "seq_len": "n_ctx"}.get(key, "not given")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _check_data_record(out: Path, record: dict[str, Any]) -> None:
    """A ValueError when OUT already holds work (a collected store, a checkpoint or a partition) of a run whose
    data settings (OUT/data.json) differ from `record`; keys of the old record missing from `record` are compared
    only when `record` has no "tokens" yet, i.e. the token fingerprint is checked once it is known."""
    import json

    from tl_tensorsim.activation_store import MANIFEST
    from tl_tensorsim.training import latest_checkpoint_step

    path = out / DATA_RECORD
    if not path.is_file():
        return
    has_work = (out / "activations" / MANIFEST).is_file() or (out / "partition").exists()
    if not has_work and latest_checkpoint_step(out / "checkpoints") is None:
        return  # nothing there depends on the data yet
    old = json.loads(path.read_text())
    keys = [k for k in {**old, **record} if (k in record or k != "tokens") and old.get(k) != record.get(k)]
    if keys:
        names = [_RECORD_NAMES.get(k, k) for k in keys]
        shown = "; ".join(
            f"{n}: {_shown(k, old.get(k))} there, {_shown(k, record.get(k))} now" for n, k in zip(names, keys)
        )
        raise ValueError(
            f"{', '.join(names)}: --out {out} holds a run on other data ({shown}); use a new --out (or delete {out}) "
            "to fit this data, or re-run with the earlier settings to resume that run"
        )


def _write_data_record(out: Path, record: dict[str, Any]) -> None:
    import json
    import os

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{DATA_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / DATA_RECORD)


def _digest(value: Any) -> int:
    """A 60-bit hash of a JSON-ready value (keys sorted), the same in every process."""
    import hashlib
    import json

    return int(hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:15], 16)


def _same_on_every_rank(comm: Any, value: Any, what: str) -> None:
    """Under torchrun every rank runs the command with its own arguments: a ValueError on every rank when `value`
    (JSON-ready) differs between ranks, before any rank collects or trains (one all-gather of a 60-bit hash)."""

    import torch

    if not comm.distributed:
        return
    seen = comm.all_gather(torch.tensor([_digest(value)], dtype=torch.int64))[:, 0].tolist()
    other = [rank for rank, d in enumerate(seen) if d != seen[0]]
    if other:
        raise ValueError(
            f"{what}: every rank must get the same (torchrun starts one command per rank, and the ranks share one "
            f"fit); ranks {other} differ from rank 0: run the same command on every rank, on the same files"
        )


def fit_ndm(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from tl_tensorsim.activation_store import MANIFEST, ActivationStore
    from tl_tensorsim.activations import collect_activations
    from tl_tensorsim.distributed import init_from_env
    from tl_tensorsim.ndm import fit_ndm
    from tl_tensorsim.ndm.fit import data_fingerprint, selection_mask
    from tl_tensorsim.ndm.trainer import NDMSettings

    started = torch.distributed.is_available() and not torch.distributed.is_initialized()
    comm = init_from_env()
    device = args.device or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    progress = not args.quiet and comm.is_main
    loaded: list[Any] = []

    def model_of() -> Any:
        if args.model is None:
            raise ValueError("MODEL: expected a model folder or name for this DATA (only a store needs none)")
        if not loaded:
            loaded.append(_load_model(args.model, device))
        return loaded[0]

    try:
        _same_on_every_rank(comm, vars(args), "the command line (MODEL, HOOK, --data, settings)")
        record = _data_record(args)
        _check_data_record(out, record)  # before any work: the settings as given
        data = _load_data(args, model_of)
        if isinstance(data, torch.Tensor) and not data.dtype.is_floating_point:  # token ids: collect
            if args.model is None or args.hook is None:
                what = "MODEL: expected a model folder or name" if args.model is None else "HOOK: expected a hook name"
                raise ValueError(
                    f"{what} (token ids are run through MODEL and collected at HOOK, e.g. blocks.0.hook_resid_post)"
                )
            tokens = data if args.max_sequences is None else data[: args.max_sequences]
            record["tokens"] = data_fingerprint(tokens)
            _same_on_every_rank(comm, record["tokens"], "the token ids read from DATA")
            _check_data_record(out, record)  # the token ids themselves (a DATA file changed in place)
            if comm.is_main:
                _write_data_record(out, record)
            store = out / "activations"
            if (store / MANIFEST).is_file() and ActivationStore(store).manifest.get("hook_name") == args.hook:
                data = ActivationStore(store)  # collected by an earlier run of this command
            else:
                mask = selection_mask(tokens, args.positions, not args.keep_bos)
                data = collect_activations(model_of(), tokens, args.hook, mask, args.collect_batch_size,
                                           dtype=torch.float32, out=store, progress=progress)  # fmt: skip
        elif args.max_sequences is not None:
            raise ValueError("--max-sequences: only for token ids, text or datasets (not activations)")
        elif comm.is_main:
            _write_data_record(out, record)
        settings = {f.name: getattr(args, f"ndm_{f.name}") for f in dataclasses.fields(NDMSettings)}
        for name in ("dtype", "search_dtype"):  # torch dtypes by name; other strings are refused by fit_ndm
            value = getattr(torch, settings[name], None)
            settings[name] = value if isinstance(value, torch.dtype) else settings[name]
        part = fit_ndm(data, **settings, device=device, checkpoint_dir=out / "checkpoints", resume=True,
                       checkpoint_every=args.checkpoint_every, log_every=args.log_every, threads=args.threads,
                       progress=progress)  # fmt: skip
    except (ValueError, TypeError, FileNotFoundError) as exc:
        parser.exit(2, f"tl-tensorsim: fit-ndm: {exc}\n")
    if comm.is_main:
        path = part.save(out / "partition")
        if not args.quiet:
            print(f"{part!r}\nsaved to {path}")
    if started and comm.distributed:
        torch.distributed.destroy_process_group()
    return 0
